"""A 5-feature ridge regression with one learned decay per weight (tests of issue 15).

The truth is ``w* = [1, -2, 0, 0, 3]``; features are standard normal, so the lower's Hessian
``2 X^T X / n + diag(decay)`` has its largest eigenvalue near 2-3: ``neumann(alpha=1.0)``
diverges there, while the lower's ``lr = 0.1`` is a safe step.
"""
import torch
from torch import nn

TRUE_W = [1.0, -2.0, 0.0, 0.0, 3.0]


def ridge_data(split: str, n: int = 200):
    """One full batch ``[(X, y)]`` of the split (fixed seeds: train 0, val 1)."""
    g = torch.Generator().manual_seed({"train": 0, "val": 1}[split])
    x = torch.randn(n, 5, generator=g)
    y = x @ torch.tensor(TRUE_W) + 0.5 * torch.randn(n, generator=g)
    return [(x, y)]


class Linear(nn.Module):
    """``x @ w`` with ``w`` starting at zero."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return x @ self.w


class Decays(nn.Module):
    """One decay per weight, ``exp(log_decay)``, starting at ``init``."""

    def __init__(self, init: float = 0.1):
        super().__init__()
        self.log_decay = nn.Parameter(torch.full((5,), float(init)).log())

    def forward(self):
        return self.log_decay.exp()


def penalty(model, decays):
    """``sum_i decay_i w_i^2 / 2``."""
    return (decays * model.w ** 2).sum() / 2

