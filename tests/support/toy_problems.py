"""Small builders shared by the runtime tests: toy problems over synthetic tensors."""
from __future__ import annotations

import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem


class Scalar(nn.Module):
    """One trainable scalar ``w`` (starting at ``value``); ``forward()`` returns it."""

    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(value)))

    def forward(self):
        return self.w


class Quadratic(ImplicitProblem):
    """Loss ``0.5 * |theta - sum of the other problems' parameters it reads|^2``-style toy."""

    reads: tuple = ()

    def training_step(self, batch):
        target = sum((getattr(self, r).module.weight.sum() for r in self.reads),
                     torch.zeros((), dtype=self.module.weight.dtype))
        return 0.5 * (self.module.weight - target).pow(2).sum() + 0 * batch.sum()


def constant_loader(n: int = 4):
    """An endless-enough iterable of dummy batches."""
    return [torch.zeros(1)] * n


def make_problem(name: str, reads=(), config=None, dim: int = 2, lr: float = 0.1):
    """A Quadratic problem with its own linear 'module' holding one weight vector."""
    module = nn.Linear(dim, 1, bias=False)
    problem = type(f"Q_{name}", (Quadratic,), {"reads": tuple(reads)})(
        name=name, config=config or Config(), module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=lr), train_data_loader=constant_loader())
    return problem


def engine_for(problems, l2u, iterations: int, **config):
    """An Engine over ``problems`` with ``l2u`` as ``{lower: [uppers]}`` by name."""
    by_name = {p.name: p for p in problems}
    deps = {"l2u": {by_name[l]: [by_name[u] for u in us] for l, us in l2u.items()}, "u2l": {}}
    config.setdefault("train_iters", iterations)
    e = Engine(config=EngineConfig(**config), problems=problems, dependencies=deps)
    e.history.console = False
    return e
