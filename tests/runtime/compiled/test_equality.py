"""A captured iteration gives the eager engine's parameters (50 iterations, same batches).

The captured function runs as Python here (``MLODSL_COMPILE_BACKEND=python``): it is the same
code torch.compile receives, without tens of seconds of compilation per graph on this CPU
(``test_torch_compile.py`` compiles a few for real).
"""
import pytest
import torch

from tests.support.compiled_programs import (api_engine, assert_same_parameters, mlo_engine,
                                             parameters)

METHODS = {
    "darts": ("alpha=0.01", {"darts_alpha": 0.01}),
    "sama": ("alpha=1.0", {"sama_adam_alpha": 1.0}),
    "neumann": ("iterations=2, alpha=0.5", {"neumann_iterations": 2, "neumann_alpha": 0.5}),
    "cg": ("iterations=3, alpha=1.0", {"cg_iterations": 3, "cg_alpha": 1.0}),
    "first_order": ("", {}),
    # a one-step window differentiated in the graph: second order from .mlo, first order
    # (Config.first_order's default) from the Python API
    "unroll": ("", {}),
}


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "python")


def _run(make, compile, **kwargs):
    engine = make(compile=compile, **kwargs)
    engine.run()
    if compile:  # the captured function did the work, not the eager fallback
        assert engine.whole_iteration.captured_iterations >= engine.global_step - 2, \
            engine.whole_iteration.patterns()
    return parameters(engine)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_mlo_route(method):
    args = METHODS[method][0]
    eager = _run(lambda **kw: mlo_engine(method, args, **kw), False)
    captured = _run(lambda **kw: mlo_engine(method, args, **kw), True)
    assert_same_parameters(eager, captured)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_python_api_route(method):
    fields = METHODS[method][1]
    eager = _run(lambda **kw: api_engine(method, **fields, **kw), False)
    captured = _run(lambda **kw: api_engine(method, **fields, **kw), True)
    assert_same_parameters(eager, captured)


@pytest.mark.parametrize("lower_opt,upper_opt", [
    ("SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.001)", "AdamW(lr=0.01)"),
    ("RMSprop(lr=0.01, momentum=0.5, centered=True)", "Adagrad(lr=0.05)"),
    ("Adam(lr=0.01, amsgrad=True)", "RMSprop(lr=0.001)"),
])
def test_optimizers_in_the_graph(lower_opt, upper_opt):
    kw = dict(lower_opt=lower_opt, upper_opt=upper_opt)
    eager = _run(lambda **k: mlo_engine("sama", "alpha=1.0", **kw, **k), False)
    captured = _run(lambda **k: mlo_engine("sama", "alpha=1.0", **kw, **k), True)
    assert_same_parameters(eager, captured)


def test_unroll_first_order_and_clip_in_the_window():
    kw = dict(lower_extra="grad_clip = 0.05")
    eager = _run(lambda **k: mlo_engine("unroll", "first_order=True", **kw, **k), False)
    captured = _run(lambda **k: mlo_engine("unroll", "first_order=True", **kw, **k), True)
    assert_same_parameters(eager, captured)
    eager = _run(lambda **k: mlo_engine("unroll", "", **kw, **k), False)
    captured = _run(lambda **k: mlo_engine("unroll", "", **kw, **k), True)
    assert_same_parameters(eager, captured)


def test_clip_accumulation_and_every():
    """grad_clip, grad_accum and an `every 3` schedule (two patterns: lower only, both)."""
    kw = dict(every=3, lower_extra="grad_clip = 0.05\n    grad_accum = 2",
              upper_extra="grad_clip = 0.01")
    eager = _run(lambda **k: mlo_engine("neumann", "iterations=1", **kw, **k), False)
    engine = mlo_engine("neumann", "iterations=1", compile=True, **kw)
    engine.run()
    assert set(engine.whole_iteration.patterns().values()) == {"captured"}
    assert len(engine.whole_iteration.patterns()) == 2
    assert_same_parameters(eager, parameters(engine))


@pytest.mark.parametrize("lower,upper", [("darts()", "neumann(iterations=2, alpha=0.5)"),
                                         ("cg(iterations=2)", "sama()")])
def test_three_levels_chained(lower, upper):
    """Hypergradients chained through two edges (the meta problem's gradient goes through hpo
    and, by hpo's edge, through the classifier); two patterns (every 2)."""
    from tests.support.compiled_programs import three_level_engine
    eager = three_level_engine(False, lower, upper)
    eager.run()
    engine = three_level_engine(True, lower, upper)
    engine.run()
    assert set(engine.whole_iteration.patterns().values()) == {"captured"}
    assert len(engine.whole_iteration.patterns()) == 2
    assert engine.whole_iteration.captured_iterations >= 37
    before = torch.tensor(0.5)
    assert float((engine.problems["meta"].trainable_parameters()[0] - before).abs()) > 1e-6
    assert_same_parameters(parameters(eager), parameters(engine))
