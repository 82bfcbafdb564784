"""Checkpointed ``unroll`` keeps memory bounded: no window outlives itself, few snapshots.

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
    gc.collect()  # earlier engines' leftovers would count too
    try:
        _engine(T, windows=1).run()
    finally:
        Upper.training_step = original
    return seen["n"]


def test_checkpointed_unroll_keeps_few_states():
    small, large = (_weight_sized_alive_at_upper_step(T) for T in (4, 16))
    # When the upper steps: the live parameter, the newest fast weights and momentum and the
    # upper's parameter (4 at T = 4, which keeps no snapshot), plus at T = 16 the fast weights
    # and momentum of 2 snapshots: 8, against 10 with sqrt(T) segments (3 snapshots) and 34
    # when every step keeps its inputs.
    assert large <= 9
    assert large - small <= 5


def _simulate(T, slots=None, passes=1):
    """Drive a ``_Tape`` of ``T`` counting steps through ``passes`` backward sweeps."""
    replays = []
    tape = unroll_mod._Tape(T, slots)

    def make(i):
        def fn(x, replay=False):
            replays.append(i)
            assert float(x) == i  # a replay starts from step i's true inputs
            return (x + 1,)
        return fn

    x = torch.zeros(())
    for i in range(T):
        tape.add(make(i), 1, [x])
        x = x + 1
    peak = 0
    for _ in range(passes):
        for i in reversed(range(T)):
            assert float(tape.inputs(i)[0]) == i
            peak = max(peak, sum(1 for k in tape.snapshots if k != 0))
            tape.done(i)
    return tape, len(replays), peak


def test_binomial_schedule_replays_the_optimum_within_its_slots():
    for T in (1, 2, 5, 8, 20, 37):
        for slots in (0, 1, 2, 3):
            tape, replays, peak = _simulate(T, slots)
            assert peak <= slots
            assert replays == unroll_mod._forward_replays(T, slots)[T]
    # The closed form matches the recursion it solves (small cases, brute force).
    R = {}
    for c in range(4):
        for n in range(1, 30):
            R[n, c] = (n * (n - 1) // 2 if c == 0 or n <= 1 else
                       min(m + R[n - m, c - 1] + R[m, c] for m in range(1, n)))
            assert unroll_mod._replays(n, c) == R[n, c]
    # The default: the fewest slots within REPLAY_BUDGET replays per step.
    assert unroll_mod._Tape(20).slots == 2 and _simulate(20)[1] <= 2 * 20


def test_a_second_backward_replays_from_the_first_step():
    tape, replays, peak = _simulate(12, 2, passes=2)
    assert peak <= 2 and set(tape.snapshots) == {0}
