"""Parts of the small programs that the run-folder tests train in `mlodsl run` subprocesses.

A 1-layer regression on fixed synthetic data (batched by the runtime, shuffled, so resuming
must restore the data position), a loss that can be slowed down (so a test can kill a run in
the middle), and losses that kill or hang one rank of a distributed run.
"""
from __future__ import annotations

import os
import signal
import time

import torch
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    """``n -> 1`` linear regression, initialised from torch's global generator (the seed)."""

    def __init__(self, n: int = 4, width: int = 1):
        super().__init__()
        self.fc = nn.Linear(n, width)

    def forward(self, x):
        return self.fc(x).mean(dim=1, keepdim=True)


def data(n: int = 4, size: int = 24):
    """A fixed regression data set (a TensorDataset: the runtime batches and shuffles it)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(size, n, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(size, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def mse(delay: float = 0.0):
    """A callable loss ``f(problems, batch)``; sleeps ``delay`` seconds per step."""
    def loss(problems, batch):
        if delay:
            time.sleep(delay)
        x, y = batch
        return F.mse_loss(problems.inner(x), y)
    return loss


def fail_on_rank(rank: int, step: int, how: str, delay: float = 0.0):
    """A loss that, on ``rank`` from its ``step``-th call, kills its process (``how="die"``)
    or hangs (``how="hang"``); otherwise :func:`mse`."""
    calls = {"n": 0}
    inner = mse(delay)

    def loss(problems, batch):
        calls["n"] += 1
        if int(os.environ.get("RANK", "0")) == rank and calls["n"] >= step:
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return inner(problems, batch)
    return loss


def validation_loss(problem):
    """``dict(loss=...)`` of ``problem`` on the whole data set."""
    x, y = data(problem.module.fc.in_features).tensors
    return {"loss": F.mse_loss(problem(x), y).item()}
