"""Betty's ``Config(gradient_accumulation=k)``: one batch per step, an update every k-th step.

Betty counts each call of a problem's step (one batch, its gradient divided by k, added up)
and updates the parameters on every k-th; its uppers step after ``unroll_steps * k`` steps.
"""
from __future__ import annotations

import torch

from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem
from tests.support.toy_problems import Scalar


class Linear(ImplicitProblem):
    """loss = w * c for the batch's c: the gradient is c."""

    updates = 0

    def training_step(self, batch):
        return self.module() * batch

    def param_callback(self):
        self.updates += 1


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return self.lower() ** 2


def lower_problem(k):
    module = Scalar(10.0)
    return Linear(name="lower", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
                  train_data_loader=[torch.tensor(1.0), torch.tensor(3.0)],
                  config=Config(gradient_accumulation=k)), module


def test_a_leaf_updates_every_kth_step_with_the_mean_gradient():
    lower, module = lower_problem(2)
    engine = Engine([lower], EngineConfig(train_iters=1))
    engine.run()
    assert (lower.count, module.w.item(), lower.updates) == (1, 10.0, 0)  # accumulating
    engine.train_iters = 4
    engine.run()
    # two updates, each by the mean of the gradients 1 and 3
    assert (lower.count, module.w.item(), lower.updates) == (4, 6.0, 2)


def test_an_upper_steps_after_unroll_steps_updates_of_its_lower():
    lower, _ = lower_problem(2)
    um = Scalar(0.0)
    upper = Upper(name="upper", module=um, optimizer=torch.optim.SGD(um.parameters(), lr=0.1),
                  train_data_loader=[0], config=Config(unroll_steps=1))
    engine = Engine([upper, lower], EngineConfig(train_iters=6),
                    {"l2u": {lower: [upper]}})
    assert engine.edges[("upper", "lower")].every == 2
    engine.run()
    assert (lower.count, upper.count) == (6, 3)
