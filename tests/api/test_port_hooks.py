"""Betty-style programs (written here, in Betty's idiom) for the problems' hooks.

``param_callback`` with Betty's signature (none) and the seed's (the parameters);
``on_inner_loop_start`` called where Betty calls it (before the first step of each unrolled
window); a validation that fine-tunes with gradients; problems without a data loader that
define ``get_batch`` and read an :class:`mlodsl.envs.Env`; ``HigherIterativeProblem``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlodsl import MLOError
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.envs import Env
from mlodsl.problems import HigherIterativeProblem, ImplicitProblem, IterativeProblem
from tests.support.toy_problems import Scalar

X = torch.linspace(-1, 1, 16).reshape(8, 2)
Y = X.sum(dim=1, keepdim=True)


class ClampNoArgs(ImplicitProblem):
    """Betty 0.2.1's signature: param_callback(self)."""

    def training_step(self, batch):
        return self.module()  # d/dw = 1: one SGD step at lr=1 takes w from 0.5 to -0.5

    def param_callback(self):
        for p in self.trainable_parameters():
            p.data.clamp_(min=0.0)


class ClampParams(ClampNoArgs):
    """The seed's signature: param_callback(self, params)."""

    def param_callback(self, params):
        for p in params:
            p.data.clamp_(min=0.0)


@pytest.mark.parametrize("cls", [ClampNoArgs, ClampParams])
def test_param_callback_with_either_signature_runs_after_each_step(cls):
    module = Scalar(0.5)
    p = cls(name="p", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
            train_data_loader=[0])
    Engine([p], EngineConfig(train_iters=1)).run()
    assert module.w.item() == 0.0  # -0.5 without the callback


class Outer(ImplicitProblem):
    starts: list

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.inner(x), y)

    def on_inner_loop_start(self):
        self.starts.append(self.count)


class Inner(ImplicitProblem):
    """iMAML's idiom: each inner loop starts from the meta weights."""

    starts: list

    def training_step(self, batch):
        x, y = batch
        reg = sum(((a - b) ** 2).sum() for a, b in zip(self.parameters(),
                                                      self.outer.parameters()))
        return F.mse_loss(self.module(x), y) + 0.5 * reg

    def on_inner_loop_start(self):
        self.module.load_state_dict(self.outer.module.state_dict())
        self.starts.append(self.count)


def imaml(unroll=3, engine_cls=Engine, env=None, loaders=True, iters=9):
    torch.manual_seed(0)
    om, im = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    data = {"train_data_loader": [(X, Y)]} if loaders else {}
    outer = Outer(name="outer", module=om, optimizer=torch.optim.SGD(om.parameters(), lr=0.1),
                  **data)
    inner = Inner(name="inner", module=im, optimizer=torch.optim.SGD(im.parameters(), lr=0.1),
                  config=Config(type="cg", cg_iterations=2, unroll_steps=unroll), **data)
    outer.starts, inner.starts = [], []
    engine = engine_cls([outer, inner], EngineConfig(train_iters=iters, valid_step=3),
                        {"u2l": {outer: [inner]}, "l2u": {inner: [outer]}}, env=env)
    return engine, outer, inner


def test_on_inner_loop_start_is_called_before_each_unrolled_window():
    engine, outer, inner = imaml(unroll=3)
    weights = []
    original = Inner.on_inner_loop_start

    def spy(self):
        original(self)
        weights.append((self.module.weight.detach().clone(),
                        self.outer.module.weight.detach().clone()))

    inner.on_inner_loop_start = spy.__get__(inner)
    engine.run()
    # Betty: the lower's hook before its steps 1, 4, 7 (windows of 3); a problem without
    # uppers at each of its own steps (its unroll_steps is 1).
    assert inner.starts == [0, 3, 6] and outer.starts == [0, 1, 2]
    assert all(torch.equal(w, m) for w, m in weights)  # each window starts at the meta weights


class FineTuningEngine(Engine):
    """iMAML's validation: fine-tune a copy of the meta model with backward()."""

    def validation(self):
        net = torch.nn.Linear(2, 1)
        net.load_state_dict(self.outer.module.state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            F.mse_loss(net(X), Y).backward()
            opt.step()
        with torch.no_grad():
            return {"loss": F.mse_loss(net(X), Y).item()}


def test_validation_may_use_gradients():
    engine, _, _ = imaml(engine_cls=FineTuningEngine)
    records = engine.run()
    losses = [r["loss"] for r in records if r.get("kind") == "validation"]
    assert len(losses) == 3 and all(v == v for v in losses)


class Tasks(Env):
    """An environment that samples a task (a shifted regression) for every inner loop."""

    def initialize(self):
        self.initialized = (self.device, self.inner, self.outer)
        self.sampled = 0

    def step(self):
        self.sampled += 1
        shift = float(self.sampled)
        self.batch = (X.to(self.device), (Y + shift).to(self.device))


class EnvOuter(Outer):
    def get_batch(self):
        return self.env.batch


class EnvInner(Inner):
    def get_batch(self):
        return self.env.batch


class TaskEngine(Engine):
    def train_step(self):
        if self.global_step % 3 == 1:
            self.env.step()
        for leaf in self.leaves:
            leaf.step(global_step=self.global_step)


def test_get_batch_problems_read_an_env():
    env = Tasks()
    torch.manual_seed(0)
    om, im = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    outer = EnvOuter(name="outer", module=om, optimizer=torch.optim.SGD(om.parameters(), lr=0.1))
    inner = EnvInner(name="inner", module=im, optimizer=torch.optim.SGD(im.parameters(), lr=0.1),
                     config=Config(unroll_steps=3))
    outer.starts, inner.starts = [], []
    engine = TaskEngine([outer, inner], EngineConfig(train_iters=6),
                        {"u2l": {outer: [inner]}, "l2u": {inner: [outer]}}, env=env)
    assert env.initialized == (engine.device, inner, outer)
    assert outer.env is env and inner.env is env
    engine.run()
    assert env.sampled == 2 and (inner.count, outer.count) == (6, 2)
    assert torch.equal(inner.cur_batch[1], Y + 2.0)


def test_a_problem_with_neither_data_nor_get_batch_is_a_clear_error():
    module = Scalar(0.0)
    p = ClampNoArgs(name="p", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=1))
    with pytest.raises(MLOError, match="get_batch"):
        Engine([p], EngineConfig(train_iters=1))


class Learner(HigherIterativeProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x) * self.meta(), y)


class Meta(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.learner(x), y + 1.0)


def test_higher_iterative_problem_is_an_iterative_problem_unrolled_by_default():
    assert issubclass(HigherIterativeProblem, IterativeProblem)
    torch.manual_seed(0)
    lm = torch.nn.Linear(2, 1)
    learner = Learner(name="learner", module=lm, optimizer=torch.optim.SGD(lm.parameters(), lr=0.1),
                      train_data_loader=[(X, Y)], config=Config(unroll_steps=2))
    mm = Scalar(1.0)
    # Betty reads first_order from the upper; second order is what lets meta's scale through.
    meta = Meta(name="meta", module=mm, optimizer=torch.optim.SGD(mm.parameters(), lr=0.1),
                train_data_loader=[(X, Y)], config=Config(first_order=False))
    engine = Engine([meta, learner], EngineConfig(train_iters=2),
                    {"u2l": {meta: [learner]}, "l2u": {learner: [meta]}})
    assert engine.edges[("meta", "learner")].method == "unroll"
    engine.run()
    assert meta.count == 1 and mm.w.item() != 1.0


class Grouped(ImplicitProblem):
    """Betty's param_groups() hook: per-group learning rates for one optimizer."""

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x), y)

    def param_groups(self):
        return [{"params": [self.module.weight], "lr": 0.0},
                {"params": [self.module.bias], "lr": 0.5}]

    def configure_scheduler(self):
        return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)


def test_param_groups_rebuilds_the_optimizer_over_the_groups():
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    weight = module.weight.detach().clone()
    bias = module.bias.detach().clone()
    p = Grouped(name="p", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
                train_data_loader=[(X, Y)])
    Engine([p], EngineConfig(train_iters=2)).run()
    assert [g["lr"] for g in p.optimizer.param_groups] == [0.0, 0.125]  # the scheduler follows
    assert torch.equal(module.weight.detach(), weight)  # lr 0: untouched
    assert not torch.equal(module.bias.detach(), bias)


def test_param_callback_as_a_static_method_or_on_the_instance():
    class Static(ClampNoArgs):
        @staticmethod
        def param_callback(params):
            for p in params:
                p.data.clamp_(min=0.0)

    seen = []
    for make in (Static, ClampNoArgs):
        module = Scalar(0.5)
        p = make(name="p", module=module, optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
                 train_data_loader=[0])
        if make is ClampNoArgs:  # replaced on the instance, with the seed's signature
            p.param_callback = seen.append
        Engine([p], EngineConfig(train_iters=1)).run()
        assert module.w.item() == (0.0 if make is Static else -0.5)
    assert [len(params) for params in seen] == [1]


def test_a_resumed_run_calls_on_inner_loop_start_where_the_uninterrupted_one_does(tmp_path):
    engine, outer, inner = imaml(unroll=3, iters=9)
    engine.history.console = False
    engine.run()
    full = list(inner.starts)
    first, _, cut = imaml(unroll=3, iters=4)  # stops in the middle of the second window
    first.history.console = False
    first.run()
    path = first.save_checkpoint(str(tmp_path))
    resumed, _, inner2 = imaml(unroll=3, iters=9)
    resumed.history.console = False
    from mlodsl.runtime import checkpoint as ckpt
    ckpt.load_checkpoint(resumed, path)
    resumed.run()
    assert full == [0, 3, 6] and cut.starts + inner2.starts == full
