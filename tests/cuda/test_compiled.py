"""The compiled iteration on the device under test: on CUDA it is compiled with CUDA graphs
(``mode="reduce-overhead"``), reads its batches from static buffers, and after 50 iterations
gives the eager engine's parameters (darts, neumann). Real inductor compilations: tens of
seconds each."""
import pytest
from torch._dynamo.utils import counters

from tests.support import cuda as H
from tests.support.compiled_programs import assert_same_parameters, mlo_engine, parameters

pytestmark = H.requires_device

METHODS = {"darts": "alpha=0.01", "neumann": "iterations=2, alpha=0.5"}


@pytest.fixture(autouse=True)
def inductor(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "inductor")
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "1")  # count captured iterations exactly
    monkeypatch.delenv("MLODSL_CUDA_GRAPHS", raising=False)


def _engine(method, compile):
    return mlo_engine(method, METHODS[method], compile=compile,
                      engine_extra=f'device = "{H.DEVICE}"')


@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_equals_eager_on_the_device(method):
    eager = _engine(method, False)
    eager.run()
    counters.clear()
    engine = _engine(method, True)
    engine.run()
    whole = engine.whole_iteration
    assert whole.captured_iterations == 49, whole.patterns()
    assert H.placement_errors(engine) == []
    assert_same_parameters(parameters(eager), parameters(engine), rtol=1e-4)
    staged = whole.static_buffers()
    if not H.ON_GPU:  # a forced CPU device: torch's default mode, no buffers
        assert staged == {}
        return
    # one pattern, one batch shape: every compiled call copied its batches into one buffer
    assert list(staged) == [("classifier", "hpo")]
    assert staged[("classifier", "hpo")]["fills"] == 49
    assert len(staged[("classifier", "hpo")]["buffers"]) == 1
    # inductor recorded a CUDA graph (nothing made it skip one), and every input of the
    # graph was static: the batches came from the buffers, not from cudagraph copies
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] == 0, \
        dict(counters["inductor"])
    # Adam's step counts moved to the device for the graph to write them
    opt = engine.problems["hpo"].optimizer
    assert all(H.same_device(s["step"]) for s in opt.state.values())
