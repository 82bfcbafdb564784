"""What a captured iteration cannot hold runs eagerly, after one warning saying why and where."""
import re
import warnings

import pytest

from tests.support.compiled_programs import (api_engine, assert_same_parameters, mlo_engine,
                                             parameters)


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "python")


def _run_warned(engine):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.run()
    return [str(w.message) for w in caught if "compile = True" in str(w.message)]


def test_unsupported_optimizer_runs_eagerly_with_one_located_warning():
    engine = mlo_engine("darts", "alpha=0.01", compile=True, lower_opt="Adamax(lr=0.01)")
    messages = _run_warned(engine)
    assert len(messages) == 1, messages
    assert "Adamax has no functional update rule" in messages[0]
    assert re.match(r"\S+:\d+:\d+: ", messages[0]), messages[0]  # the optimizer field
    assert engine.whole_iteration.captured_iterations == 0
    eager = mlo_engine("darts", "alpha=0.01", compile=False, lower_opt="Adamax(lr=0.01)")
    eager.run()
    assert_same_parameters(parameters(eager), parameters(engine))


def test_unroll_edge_runs_eagerly_and_names_the_edge():
    """An unroll window the graph cannot hold (grad_accum inside the window)."""
    engine = mlo_engine("unroll", "", compile=True, iterations=10, every=2,
                        lower_extra="grad_accum = 2")
    messages = _run_warned(engine)
    assert len(messages) == 1 and "edge hpo -> classifier" in messages[0], messages
    assert "unroll" in messages[0]
    assert re.match(r"\S+:\d+:\d+: ", messages[0])


def test_engine_settings_that_need_the_host_fall_back():
    engine = api_engine("darts", compile=True, iterations=5, engine=dict(on_nan="skip"))
    messages = _run_warned(engine)
    assert len(messages) == 1 and "on_nan = 'skip'" in messages[0]
    assert engine.whole_iteration.captured_iterations == 0


def test_a_patterns_first_iteration_is_eager_until_the_optimizer_has_state():
    """torch creates momentum buffers and Adam moments at the first step: that step is the
    eager engine's, every later one is captured."""
    engine = api_engine("darts", compile=True, iterations=6, darts_alpha=0.01)
    assert _run_warned(engine) == []
    assert engine.whole_iteration.captured_iterations == 5
    assert engine.whole_iteration.patterns() == {("classifier", "hpo"): "captured"}


def test_a_module_with_buffers_keeps_every_pattern_eager():
    """BatchNorm statistics advance only in their problem's own step (the eager engine gives
    every other evaluation cloned buffers): no pattern is captured, nothing changes."""
    import torch

    def with_bn(compile):
        engine = api_engine("darts", compile=compile, iterations=6, darts_alpha=0.01)
        net = engine.problems["classifier"].module
        net.register_buffer("seen", torch.zeros(()))  # a buffer is enough to decide
        return engine

    engine = with_bn(True)
    messages = _run_warned(engine)
    assert len(messages) == 1 and "buffers" in messages[0]
    assert engine.whole_iteration.captured_iterations == 0


def test_betty_hooks_and_cross_step_accumulation_stay_eager():
    """A problem with an on_inner_loop_start hook (Python between steps), and Betty's
    gradient accumulation across steps (gradients kept between iterations), run eagerly."""
    from tests.support.compiled_programs import Classifier

    class Hooked(Classifier):
        def on_inner_loop_start(self):
            self.starts = getattr(self, "starts", 0) + 1

    engine = api_engine("darts", compile=True, iterations=4, darts_alpha=0.01,
                        lower_class=Hooked)
    messages = _run_warned(engine)
    assert len(messages) == 1 and "on_inner_loop_start" in messages[0], messages
    assert engine.problems["classifier"].starts == 4

    engine = api_engine("darts", compile=True, iterations=4, darts_alpha=0.01,
                        lower_config=dict(gradient_accumulation=2))
    messages = _run_warned(engine)
    assert len(messages) == 1 and "gradient_accumulation" in messages[0], messages
    assert engine.whole_iteration.captured_iterations == 0
