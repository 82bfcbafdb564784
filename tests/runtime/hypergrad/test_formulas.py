"""``darts`` and ``sama`` equal their defining formulas; no method touches BatchNorm statistics."""
import pytest
import torch
from torch import nn

from tests.support.hg_problems import DT, hypergradient, rel_err, ridge_data, ridge_engine
from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime.hypergrad.chain import total_gradient

DATA = ridge_data()
X, Y, XV, YV, LAM = DATA
W0 = torch.linspace(-1, 1, X.shape[1], dtype=DT)


def _mixed_fd(direction, eps):
    """``(grad_lam g(w - eps d) - grad_lam g(w + eps d)) / (2 eps)`` for the ridge lower."""
    def grad_lam(w):
        lam = LAM.clone().requires_grad_(True)
        loss = ((X @ w - Y) ** 2).sum() / (2 * len(Y)) + (lam * w ** 2).sum() / 2
        return torch.autograd.grad(loss, lam)[0]
    return (grad_lam(W0 - eps * direction) - grad_lam(W0 + eps * direction)) / (2 * eps)


def _v():
    return XV.T @ (XV @ W0 - YV) / len(YV)


def test_darts_formula():
    alpha = 0.05
    engine, upper, lower = ridge_engine("darts", dict(darts_alpha=alpha), w0=W0, data=DATA)
    v = _v()
    want = _mixed_fd(v, alpha / v.norm())
    assert rel_err(hypergradient(engine, upper, lower), want) <= 1e-10


def test_sama_with_sgd_is_darts():
    a, b = (hypergradient(*ridge_engine(m, c, w0=W0, data=DATA))
            for m, c in (("sama", dict(sama_adam_alpha=0.3)), ("darts", dict(darts_alpha=0.3))))
    assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("cls,kw", [(torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99))),
                                    (torch.optim.AdamW, dict(lr=0.02, weight_decay=0.1))])
def test_sama_adam_formula(cls, kw):
    alpha = 0.5
    engine, upper, lower = ridge_engine("sama", dict(sama_adam_alpha=alpha), w0=W0, data=DATA,
                                        lower_opt=lambda p: cls(p, **kw))
    # Give the lower's Adam some state: two ordinary steps, then put w back at W0.
    for _ in range(2):
        lower.optimizer.zero_grad()
        loss = engine.evaluate_loss(lower, (X, Y))
        loss.backward()
        lower.optimizer.step()
    with torch.no_grad():
        lower.module.p.copy_(W0)
    state = lower.optimizer.state[lower.module.p]
    m, s, t = state["exp_avg"], state["exp_avg_sq"], int(state["step"]) + 1
    b1, b2 = kw["betas"] if "betas" in kw else (0.9, 0.999)
    g = X.T @ (X @ W0 - Y) / len(Y) + LAM * W0  # the lower's gradient at W0
    # d/dg of lr/(1-b1^t) * m'/(sqrt(v'/(1-b2^t)) + eps), with m', v' the next moments.
    m2, v2, bc2 = b1 * m + (1 - b1) * g, b2 * s + (1 - b2) * g * g, 1 - b2 ** t
    den = v2.sqrt() / bc2 ** 0.5 + 1e-8
    diag = kw["lr"] / (1 - b1 ** t) * (
        (1 - b1) / den - m2 * (1 - b2) * g / (bc2 ** 0.5 * v2.sqrt() * den ** 2))
    pv = diag * _v()
    want = _mixed_fd(pv, alpha / pv.norm())
    assert rel_err(hypergradient(engine, upper, lower), want) <= 1e-8


class BNLower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        out = self.module(x).squeeze(-1)
        return ((out - y) ** 2).mean() + (self.upper.module.p * self.module[1].weight ** 2).sum()


class BNUpper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return ((self.lower(x).squeeze(-1) - y) ** 2).mean()


@pytest.mark.parametrize("method", ["darts", "neumann", "cg", "sama", "first_order"])
def test_hypergradients_never_touch_batchnorm_statistics(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    up = nn.Module()
    up.p = nn.Parameter(torch.full((1, 4), 0.1, dtype=DT))
    x, y = torch.randn(16, 4, dtype=DT) * 3 + 1, torch.randn(16, dtype=DT)
    lower = BNLower(name="lower", module=net, optimizer=torch.optim.Adam(net.parameters()),
                    train_data_loader=[(x, y)])
    upper = BNUpper(name="upper", module=up, optimizer=torch.optim.SGD(up.parameters(), lr=0.1),
                    train_data_loader=[(x, y)], config=Config(type=method, cg_iterations=3,
                                                              neumann_iterations=3))
    engine = Engine(config=EngineConfig(train_iters=1, valid_step=0), problems=[upper, lower],
                    dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    engine.run()  # one lower step: the statistics advance exactly once
    bn = net[0]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    assert stats[2] == 1
    params = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        loss = engine.evaluate_loss(upper, upper.next_batch())
        total_gradient(engine, upper, loss)
    torch.testing.assert_close(bn.running_mean, stats[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, stats[1], rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == stats[2]
    for a, b in zip(params, net.parameters()):
        assert torch.equal(a, b.detach())
