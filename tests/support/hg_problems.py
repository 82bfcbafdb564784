"""Small problems with closed-form hypergradients, built through mlodsl's public Python API.

Ridge regression with a per-feature penalty (the lower) and validation MSE (the upper)::

    g(w, lam) = |X w - y|^2 / (2 n) + sum_j lam_j w_j^2 / 2
    f(w)      = |Xv w - yv|^2 / (2 m)
    H = X^T X / n + diag(lam),   w*(lam) = H^{-1} X^T y / n
    df/dlam = -diag(w*) H^{-1} grad f(w*)

Everything is float64 so that "exact" can mean 1e-6 relative.
"""
from __future__ import annotations

import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem, IterativeProblem
from mlodsl.runtime.hypergrad.chain import total_gradient

DT = torch.float64


class Vec(nn.Module):
    """A module whose only parameter is one vector."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.p = nn.Parameter(value.clone().to(DT))

    def forward(self):
        return self.p


def ridge_data(d: int = 5, n: int = 40, m: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    w_true = torch.randn(d, generator=g, dtype=DT)
    y = X @ w_true + 0.3 * torch.randn(n, generator=g, dtype=DT)
    Xv = torch.randn(m, d, generator=g, dtype=DT)
    yv = Xv @ w_true + 0.3 * torch.randn(m, generator=g, dtype=DT)
    lam = 0.1 + torch.rand(d, generator=g, dtype=DT)
    return X, y, Xv, yv, lam


def ridge_exact(X, y, Xv, yv, lam):
    """``(w*, H, exact hypergradient)`` for the ridge problem."""
    n, m = len(y), len(yv)
    H = X.T @ X / n + torch.diag(lam)
    w = torch.linalg.solve(H, X.T @ y / n)
    grad_f = Xv.T @ (Xv @ w - yv) / m
    return w, H, -w * torch.linalg.solve(H, grad_f)


class RidgeLower(ImplicitProblem):
    def training_step(self, batch):
        X, y = batch
        w = self.module()
        return ((X @ w - y) ** 2).sum() / (2 * len(y)) + (self.upper() * w ** 2).sum() / 2


class RidgeLowerIter(IterativeProblem):
    training_step = RidgeLower.training_step


class RidgeUpper(ImplicitProblem):
    def training_step(self, batch):
        X, y = batch
        w = self.lower()
        return ((X @ w - y) ** 2).sum() / (2 * len(y))


def ridge_engine(method: str, config: dict | None = None, w0=None, data=None,
                 lower_opt=None, lower_cls=RidgeLower, upper_lr: float = 1.0, every: int = 1):
    """Engine with ``upper`` (penalties) above ``lower`` (weights) using ``method``."""
    X, y, Xv, yv, lam = data if data is not None else ridge_data()
    w_star, _, _ = ridge_exact(X, y, Xv, yv, lam)
    lower_mod = Vec(w_star if w0 is None else w0)
    upper_mod = Vec(lam)
    lower = lower_cls(name="lower", module=lower_mod,
                      optimizer=(lower_opt or (lambda p: torch.optim.SGD(p, lr=0.1)))(
                          lower_mod.parameters()),
                      train_data_loader=[(X, y)], config=Config(unroll_steps=every))
    upper = RidgeUpper(name="upper", module=upper_mod,
                       optimizer=torch.optim.SGD(upper_mod.parameters(), lr=upper_lr),
                       train_data_loader=[(Xv, yv)],
                       config=Config(type=method, unroll_steps=every, **(config or {})))
    engine = Engine(config=EngineConfig(train_iters=1, valid_step=0),
                    problems=[upper, lower],
                    dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    return engine, upper, lower


def hypergradient(engine, upper, lower) -> torch.Tensor:
    """The upper's total gradient at the current point (lower's batch drawn first)."""
    lower.next_batch()
    batch = upper.next_batch()
    loss = engine.evaluate_loss(upper, batch)
    return total_gradient(engine, upper, loss)[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
