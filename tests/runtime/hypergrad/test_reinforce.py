"""``reinforce`` is unbiased on a discrete problem whose expected hypergradient is known.

The upper holds logits ``theta`` over K "data points"; each iteration the lower samples
``i ~ softmax(theta)`` and takes one SGD step (lr 1) on ``(w - c_i)^2 / 2``, landing on
``w = c_i``; the upper's loss is ``F_i = (w - t)^2 / 2``. So ``E[F] = sum_i p_i F_i`` and
``dE[F]/dtheta_j = p_j (F_j - sum_i p_i F_i)``. The upper's learning rate is 0 (theta stays
put) and every iteration's gradient is one independent sample of the estimator.
"""
import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem

C = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
T = 0.5
THETA = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)


class Sampler(ImplicitProblem):
    def training_step(self, batch):
        logp = torch.log_softmax(self.upper.module.theta, 0)
        i = int(torch.multinomial(logp.detach().exp(), 1))
        return {"loss": (self.module.w - C[i]) ** 2 / 2, "log_prob": logp[i]}


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return (self.lower.module.w - T) ** 2 / 2


def _run(n, decay):
    grads = []

    class Spy(Engine):
        def before_optimizer_step(self, problem):
            super().before_optimizer_step(problem)
            if problem.name == "upper":
                grads.append(problem.module.theta.grad.clone())

    lm, um = nn.Module(), nn.Module()
    lm.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
    um.theta = nn.Parameter(THETA.clone())
    lower = Sampler(name="lower", module=lm, optimizer=torch.optim.SGD(lm.parameters(), lr=1.0),
                    train_data_loader=[0])
    upper = Upper(name="upper", module=um, optimizer=torch.optim.SGD(um.parameters(), lr=0.0),
                  train_data_loader=[0],
                  config=Config(type="reinforce", reinforce_baseline_decay=decay))
    Spy(config=EngineConfig(train_iters=n, valid_step=0, seed=0), problems=[upper, lower],
        dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}}).run()
    return torch.stack(grads)


def test_reinforce_is_unbiased():
    p = torch.softmax(THETA, 0)
    F = (C - T) ** 2 / 2
    exact = p * (F - (p * F).sum())
    g = _run(1500, 0.9)
    mean, se = g.mean(0), g.std(0) / len(g) ** 0.5
    # Fixed seed; tolerance: 4 standard errors per coordinate (and a small absolute floor).
    assert torch.all((mean - exact).abs() <= 4 * se + 1e-3), (mean, exact, se)


def test_baseline_reduces_variance():
    no_baseline = _run(400, 1.0)  # decay 1: the baseline stays 0
    with_baseline = _run(400, 0.9)
    assert with_baseline.var(0).sum() < no_baseline.var(0).sum()
