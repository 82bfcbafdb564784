"""An ``unroll`` window of several steps (``every 5``) runs captured and matches the eager one.

The lower's steps inside the window are captured steps on the window's fast weights (kept,
detached, in the window itself); the iteration that closes it replays the window's steps from
its start state inside the upper's differentiated function. 50 iterations, float32, relative
1e-5, the captured functions run as Python (``MLODSL_COMPILE_BACKEND=python``).
"""
import pytest
import torch

from tests.support.compiled_programs import (api_engine, assert_same_parameters, mlo_engine,
                                             parameters)


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "python")


def _run(make, compile):
    engine = make(compile=compile)
    engine.run()
    if compile:  # captured after the first window (torch's first optimizer steps: eager)
        assert engine.whole_iteration.captured_iterations >= engine.global_step - 5, \
            engine.whole_iteration.patterns()
    return engine


@pytest.mark.parametrize("args", ["", "first_order=True"])
def test_mlo_route_every_5(args):
    eager = _run(lambda **k: mlo_engine("unroll", args, every=5, **k), False)
    captured = _run(lambda **k: mlo_engine("unroll", args, every=5, **k), True)
    assert_same_parameters(parameters(eager), parameters(captured))


@pytest.mark.parametrize("first_order", [False, True])
def test_python_api_route_every_5(first_order):
    eager = _run(lambda **k: api_engine("unroll", every=5, first_order=first_order, **k), False)
    captured = _run(lambda **k: api_engine("unroll", every=5, first_order=first_order, **k),
                    True)
    assert_same_parameters(parameters(eager), parameters(captured))


def test_second_order_window_differs_from_first_order():
    """The replayed window carries the upper's gradient through the lower's steps."""
    second = _run(lambda **k: mlo_engine("unroll", "", every=5, **k), True)
    first = _run(lambda **k: mlo_engine("unroll", "first_order=True", every=5, **k), True)
    a, b = parameters(second)["hpo"], parameters(first)["hpo"]
    assert any(float((x - y).abs().max()) > 1e-6 for x, y in zip(a, b))


def test_state_between_iterations_in_an_open_window():
    """Stopped inside a window (23 = 4 windows + 3 steps): the same training state, the
    window's fast weights and optimizer state included, and the same validation view."""
    states = []
    for compile in (False, True):
        engine = mlo_engine("unroll", "", every=5, iterations=23, compile=compile)
        engine.run()
        window = engine.problems["classifier"].unrolled_window
        assert window.is_open and window.steps == 3
        states.append(engine.training_state())
    (la, sa), (lb, sb) = (s.flatten() for s in states)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        if x.is_floating_point():
            scale = x.detach().abs().max().clamp_min(1e-12)
            assert float((x.detach() - y.detach()).abs().max() / scale) <= 1e-5
        else:
            assert torch.equal(x, y)
    a, b = states
    assert (a.global_step, a.schedule) == (b.global_step, b.schedule)
    for name in a.problems:  # counters and the window's step count (the rest: tensors above)
        wa, wb = a.problems[name].window, b.problems[name].window
        assert a.problems[name].count == b.problems[name].count
        assert (wa is None) == (wb is None) and (wa is None or wa["steps"] == wb["steps"])


def test_clip_and_callbacks_of_the_lower_in_the_window():
    """The lower's grad_clip on every step of the window, its after_step once the window
    closes (as the eager engine: not after each step inside it)."""
    kw = dict(every=5, lower_extra="grad_clip = 0.05\n    after_step = clamp_decay")
    eager = _run(lambda **k: mlo_engine("unroll", "", **kw, **k), False)
    captured = _run(lambda **k: mlo_engine("unroll", "", **kw, **k), True)
    assert_same_parameters(parameters(eager), parameters(captured))


def test_a_learning_rate_schedule_inside_the_window():
    """StepLR on the lower every 3 steps: the replayed window uses each step's own rate."""
    def engine(compile):
        e = mlo_engine("unroll", "", every=5, compile=compile)
        opt = e.problems["classifier"].optimizer
        e.problems["classifier"].scheduler = torch.optim.lr_scheduler.StepLR(opt, 3, 0.8)
        return e

    eager = _run(lambda compile: engine(compile), False)
    captured = _run(lambda compile: engine(compile), True)
    assert_same_parameters(parameters(eager), parameters(captured))
