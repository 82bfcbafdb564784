"""Checkpointed ``unroll`` keeps memory bounded: no window outlives itself, storage ~ sqrt(T).

Counts, not timings: which tensors are alive, and whether the per-window tapes are freed by
reference counting alone (a reference cycle through autograd, which Python's collector cannot
see, once kept every window's tape alive and made peak memory grow with the run's length).
"""
from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime.hypergrad import unroll as unroll_mod

D = 4000  # weight-sized tensors dominate, so kept states are easy to tell from the rest


class Vec(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.p = nn.Parameter(value.clone())


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        w = self.module.p
        return ((x @ w - y) ** 2).mean() + (self.upper.module.p * w ** 2).sum() / 2


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return ((x @ self.lower.module.p - y) ** 2).mean()


def _engine(T, windows, checkpoint=True):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, D, generator=g) / D ** 0.5, torch.randn(8, generator=g)
    lower_mod, upper_mod = Vec(torch.zeros(D)), Vec(torch.full((D,), 0.1))
    data = [(x, y)]
    lower = Lower(name="lower", module=lower_mod,
                  optimizer=torch.optim.SGD(lower_mod.parameters(), lr=0.01, momentum=0.9),
                  train_data_loader=data, config=Config(unroll_steps=T))
    upper = Upper(name="upper", module=upper_mod,
                  optimizer=torch.optim.SGD(upper_mod.parameters(), lr=0.01),
                  train_data_loader=data,
                  config=Config(type="unroll", unroll_steps=T, first_order=False,
                                unroll_checkpoint=checkpoint))
    return Engine(config=EngineConfig(train_iters=T * windows, valid_step=0, progress=False),
                  problems=[upper, lower],
                  dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})


def test_every_window_tape_is_freed_without_the_cycle_collector(monkeypatch):
    tapes = []
    original = unroll_mod._Tape.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        tapes.append(weakref.ref(self))

    monkeypatch.setattr(unroll_mod._Tape, "__init__", init)
    engine = _engine(T=4, windows=3)
    gc.collect()
    gc.disable()
    try:
        engine.run()
        alive = sum(r() is not None for r in tapes)
    finally:
        gc.enable()
    assert len(tapes) == 3 and alive == 0


def _weight_sized_alive_at_upper_step(T):
    """Distinct weight-sized storages alive (gc-visible) when the upper starts its step."""
    seen = {}
    original = Upper.training_step

    def step(self, batch):
        if "n" not in seen:
            ptrs = {o.untyped_storage().data_ptr() for o in gc.get_objects()
                    if isinstance(o, torch.Tensor) and o.numel() == D}
            seen["n"] = len(ptrs)
        return original(self, batch)

    Upper.training_step = step
    try:
        _engine(T, windows=1).run()
    finally:
        Upper.training_step = original
    return seen["n"]


def test_checkpointed_unroll_keeps_about_sqrt_T_states():
    small, large = (_weight_sized_alive_at_upper_step(T) for T in (4, 16))
    # Kept: fast weights and momentum of every ceil(sqrt T)-th step (T = 16: steps 4, 8, 12),
    # the newest ones, the live parameters, their momentum and the upper's parameters: about
    # 13 at T = 16 and 6 at T = 4, against 40 and 16 when every step keeps its inputs.
    assert large <= 16
    assert large - small <= 10
