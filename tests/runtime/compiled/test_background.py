"""A pattern's first compilation runs in a background thread while the run continues eagerly.

torch.compile's ``eager`` backend (dynamo traces the iteration into one graph, no inductor
code generation) keeps this fast; the switch from eager to compiled iterations must not change
the numbers.
"""
import pytest
import torch

from tests.support.compiled_programs import Loader, assert_same_parameters, mlo_engine, parameters


@pytest.fixture(autouse=True)
def dynamo_only(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "eager")
    monkeypatch.delenv("MLODSL_COMPILE_WAIT", raising=False)
    monkeypatch.setenv("MLODSL_COMPILE_COST", "0")  # compile however short the run


def _continue(engine, iterations: int) -> None:
    engine.config.train_iters = engine.global_step + iterations
    engine.run()


def test_run_continues_eagerly_then_switches_to_the_compiled_function():
    eager = mlo_engine("darts", "alpha=0.01", compile=False, iterations=12)
    eager.run()
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=4)
    engine.run()
    whole = engine.whole_iteration
    whole.wait()  # the compilation started at the second iteration has finished now
    _continue(engine, 8)
    # iteration 1 creates the optimizer state; 2-4 (at least) ran while compiling
    assert 0 < whole.captured_iterations <= 8, whole.patterns()
    assert list(whole.compile_seconds) == [("classifier", "hpo")]
    assert sum("in the background" in r.get("message", "")
               for r in engine.history.records) == 1
    assert_same_parameters(parameters(eager), parameters(engine))


def test_foreground_compilation_when_asked(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "1")
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=6)
    engine.run()
    assert engine.whole_iteration.captured_iterations == 5  # every one after the first


def _failing_backend(graph, example_inputs):
    raise RuntimeError("injected: this backend cannot compile")


torch._dynamo.register_backend(_failing_backend, name="mlodsl_test_failing")


def test_a_failed_background_compilation_leaves_the_pattern_eager(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "mlodsl_test_failing")
    eager = mlo_engine("darts", "alpha=0.01", compile=False, iterations=8)
    eager.run()
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=3)
    with pytest.warns(RuntimeWarning):
        engine.run()
        engine.whole_iteration.wait()
        _continue(engine, 5)
    assert engine.whole_iteration.captured_iterations == 0
    assert "eager" in next(iter(engine.whole_iteration.patterns().values()))
    assert_same_parameters(parameters(eager), parameters(engine))


def test_an_unknown_backend_leaves_the_pattern_eager(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "no_such_backend_for_mlodsl")
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=3)
    with pytest.warns(RuntimeWarning, match="no_such_backend_for_mlodsl"):
        engine.run()
    assert engine.whole_iteration.captured_iterations == 0


class ShortEveryThirdLoader(Loader):
    """Every third batch is smaller (an epoch's last batch): another shape for the graph."""

    def __iter__(self):
        for k, (x, y) in enumerate(super().__iter__()):
            yield (x[:5], y[:5]) if k % 3 == 2 else (x, y)


def test_batches_of_another_shape_are_compiled_in_the_background_too(monkeypatch):
    monkeypatch.setattr("tests.support.compiled_programs.Loader", ShortEveryThirdLoader)
    eager = mlo_engine("darts", "alpha=0.01", compile=False, iterations=24)
    eager.run()
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=4)
    engine.run()
    whole = engine.whole_iteration
    for more in (8, 6, 6):
        whole.wait()
        _continue(engine, more)
    assert whole.captured_iterations >= 12, whole.patterns()
    assert any("for batches of another shape" in r.get("message", "")
               for r in engine.history.records)
    assert_same_parameters(parameters(eager), parameters(engine))


def test_a_run_too_short_to_repay_the_compilation_stays_eager(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_COST", "3600")  # an hour: 30 iterations cannot repay it
    eager = mlo_engine("darts", "alpha=0.01", compile=False, iterations=30)
    eager.run()
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=30)
    engine.run()
    whole = engine.whole_iteration
    assert whole.captured_iterations == 0 and not whole.compile_seconds
    assert sum("not compiling iteration" in r.get("message", "")
               for r in engine.history.records) == 1
    assert_same_parameters(parameters(eager), parameters(engine))


def test_a_long_enough_run_compiles(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_COST", "1e-9")
    engine = mlo_engine("darts", "alpha=0.01", compile=True, iterations=30)
    engine.run()
    engine.whole_iteration.wait()
    _continue(engine, 5)
    assert engine.whole_iteration.captured_iterations >= 5
