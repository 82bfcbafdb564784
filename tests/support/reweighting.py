"""A data-reweighting program for measuring what mixed precision costs each hypergradient method.

The lower is a linear classifier (``nn.Linear``) trained on a per-example weighted
cross-entropy, with weights ``sigmoid(logit_i)`` held by the upper, which is scored by the
classifier's cross-entropy on held-out data plus a small penalty on the logits (a direct term,
so that ``first_order`` has something to return). :func:`hypergradient` runs one engine
iteration through the public Python API and returns the gradient the upper's optimizer was
handed (after fp16's gradient scaler has unscaled it).

For the implicit methods the lower's learning rate is 0, so that its step leaves it exactly
where it started in every precision; ``unroll`` differentiates through a real step (lr 0.5);
with an Adam lower (for ``sama``'s preconditioner) the first step is sign-like, the same point
whatever the gradient's rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem, IterativeProblem

N, M, D, K = 64, 48, 10, 3


def _data(dtype, device):
    g = torch.Generator().manual_seed(0)
    centers = 1.5 * torch.randn(K, D, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    x = centers[y] + torch.randn(N, D, generator=g)
    y[: N // 4] = torch.randint(0, K, (N // 4,), generator=g)  # a quarter of the labels noisy
    yv = torch.randint(0, K, (M,), generator=g)
    xv = centers[yv] + torch.randn(M, D, generator=g)
    return x.to(device, dtype), y.to(device), xv.to(device, dtype), yv.to(device)


class Logits(nn.Module):
    """One weight logit per training example."""

    def __init__(self, dtype, device):
        super().__init__()
        self.logit = nn.Parameter(torch.linspace(-1.0, 1.5, N, dtype=dtype, device=device))

    def forward(self):
        return self.logit


class Classifier(ImplicitProblem):
    """Per-example weighted cross-entropy of the linear classifier."""

    def training_step(self, batch):
        x, y = batch
        weights = torch.sigmoid(self.reweight())
        return (weights * F.cross_entropy(self.module(x), y, reduction="none")).mean()


class IterativeClassifier(IterativeProblem):
    training_step = Classifier.training_step


class Reweight(ImplicitProblem):
    """Held-out cross-entropy of the classifier, plus a small penalty on the logits."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y) + 1e-4 * self.module().pow(2).sum()


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients of every step it takes."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen.append(torch.cat([p.grad.detach().reshape(-1).double().cpu()
                                    for group in self.param_groups for p in group["params"]]))
        return super().step(closure)


def _lower_optimizer(kind: str, module: nn.Module, unrolled: bool) -> torch.optim.Optimizer:
    if kind == "adam":
        # Adam's first step is sign-like (+-lr whatever the gradient's rounding), so the lower
        # lands on the same point in every precision, and sama's preconditioner is not zero.
        return torch.optim.Adam(module.parameters(), lr=0.1)
    return torch.optim.SGD(module.parameters(), lr=0.5 if unrolled else 0.0)


def hypergradient(method: str, config: dict, dtype, precision: str, lower_opt: str = "sgd",
                  device="cpu") -> torch.Tensor:
    """The upper's total gradient (float64, on the CPU) after one iteration of the program on
    ``device`` with parameters and data in ``dtype`` (see module docstring)."""
    x, y, xv, yv = _data(dtype, device)
    torch.manual_seed(1)
    linear = nn.Linear(D, K).to(device, dtype)
    logits = Logits(dtype, device)
    unrolled = method == "unroll"
    lower_cls = IterativeClassifier if unrolled else Classifier
    lower = lower_cls(name="classifier", module=linear,
                      optimizer=_lower_optimizer(lower_opt, linear, unrolled),
                      train_data_loader=[(x, y)], config=Config(unroll_steps=1))
    opt = RecordingSGD(logits.parameters(), lr=0.0)
    upper = Reweight(name="reweight", module=logits, optimizer=opt,
                     train_data_loader=[(xv, yv)],
                     config=Config(type=method, unroll_steps=1, **config))
    engine = Engine(EngineConfig(train_iters=1, valid_step=0, precision=precision,
                                 device=str(device)),
                    [upper, lower], {"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    engine.history.console = False
    engine.run()
    assert len(opt.seen) == 1, "the upper did not take its step (an fp16 overflow?)"
    return opt.seen[0]


#: how far from float64 each precision may take a hypergradient (relative, Euclidean norm)
TOLERANCE = {"bf16": 0.01, "fp16": 0.002}

#: name: (method, Config fields, the lower's optimizer)
CASES = {
    "darts(alpha=0.01)": ("darts", {"darts_alpha": 0.01}, "sgd"),
    "darts(alpha=0.001)": ("darts", {"darts_alpha": 0.001}, "sgd"),
    "sama(alpha=0.01), SGD lower": ("sama", {"sama_adam_alpha": 0.01}, "sgd"),
    "sama(alpha=1), Adam lower": ("sama", {}, "adam"),
    "sama(alpha=0.01), Adam lower": ("sama", {"sama_adam_alpha": 0.01}, "adam"),
    "neumann(iterations=5, alpha=0.3)": ("neumann", {"neumann_iterations": 5,
                                                     "neumann_alpha": 0.3}, "sgd"),
    "cg(iterations=3)": ("cg", {"cg_iterations": 3}, "sgd"),
    "first_order": ("first_order", {}, "sgd"),
    "unroll": ("unroll", {"first_order": False}, "sgd"),
}


def rel_err(got: torch.Tensor, reference: torch.Tensor) -> float:
    """``|got - reference| / |reference|`` in the Euclidean norm."""
    return float(torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference))
