"""CUDA graphs for the compiled iteration: the options come from the device, the CPU path is
unchanged, and the static-buffer path (what CUDA runs) gives the eager engine's parameters.

No GPU here: ``torch.compile`` is replaced by a recorder that returns the captured function
itself (it runs as Python), so what is checked is mlodsl's side: which options it asks for,
and what it passes to the compiled function. tests/cuda/test_compiled.py runs it for real.
"""
import threading

import pytest
import torch

import mlodsl.runtime.compiled.capture as capture
from mlodsl.runtime.compiled import compile_options
from tests.support.compiled_programs import assert_same_parameters, mlo_engine, parameters

METHODS = {"darts": "alpha=0.01", "neumann": "iterations=2, alpha=0.5"}


def test_compile_options_follow_the_device(monkeypatch):
    monkeypatch.delenv("MLODSL_CUDA_GRAPHS", raising=False)
    assert compile_options(torch.device("cpu")) == {}
    assert compile_options(torch.device("cuda")) == {"mode": "reduce-overhead"}
    assert compile_options(torch.device("cuda", 1)) == {"mode": "reduce-overhead"}
    assert compile_options("cuda") == {"mode": "reduce-overhead"}
    # another backend has no such mode; the switch turns CUDA graphs off
    assert compile_options(torch.device("cuda"), "aot_eager") == {}
    assert compile_options(torch.device("cuda"), cuda_graphs="0") == {}
    monkeypatch.setenv("MLODSL_CUDA_GRAPHS", "0")
    assert compile_options(torch.device("cuda")) == {}


class Recorder:
    """Stands in for ``torch.compile``: records its options and every call's arguments."""

    def __init__(self):
        self.options = []
        self.batches = []

    def __call__(self, fn, **options):
        self.options.append(options)

        def compiled(*args):
            self.batches.append(args[3])
            if threading.current_thread() is not threading.main_thread():
                # a background compilation's dry call: its result is not used, and running
                # the function as Python there would swap the modules' parameters
                # (functional_call) under the engine's eager iterations
                return None
            return fn(*args)
        return compiled


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "inductor")
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "1")
    rec = Recorder()
    monkeypatch.setattr(capture.torch, "compile", rec)
    return rec


def test_cpu_run_compiles_without_cuda_graphs(recorder):
    """On the CPU: torch's default mode, no static buffers, the batches passed as drawn."""
    engine = mlo_engine("darts", METHODS["darts"], compile=True, iterations=6)
    engine.run()
    whole = engine.whole_iteration
    assert recorder.options and all("mode" not in o for o in recorder.options), recorder.options
    assert all(o["fullgraph"] and o["dynamic"] is False for o in recorder.options)
    assert whole.static_buffers() == {}
    assert whole.captured_iterations == 5
    xs = [b["classifier"][0][0] for b in recorder.batches]
    assert len({x.data_ptr() for x in xs}) > 1  # fresh batches, no staging


@pytest.mark.parametrize("method", sorted(METHODS))
def test_static_buffer_path_gives_the_eager_parameters(recorder, monkeypatch, method):
    """The CUDA path forced on the CPU: 50 iterations equal the eager engine's, every call
    reads its batches from one static buffer per pattern and shape, and the outputs handed
    to the engine are copies (a CUDA graph's replay overwrites its own)."""
    eager = mlo_engine(method, METHODS[method], compile=False)
    eager.run()
    monkeypatch.setattr(capture, "compile_options", lambda device, backend: {
        "mode": "reduce-overhead"})
    engine = mlo_engine(method, METHODS[method], compile=True)
    engine.run()
    whole = engine.whole_iteration
    assert whole.captured_iterations == 49
    assert recorder.options == [dict(fullgraph=True, dynamic=False, backend="inductor",
                                     mode="reduce-overhead")]
    staged = whole.static_buffers()
    assert list(staged) == [("classifier", "hpo")]
    assert staged[("classifier", "hpo")]["fills"] == 49
    (buffers,) = staged[("classifier", "hpo")]["buffers"].values()  # one batch shape
    for name in ("classifier", "hpo"):
        ptrs = {b[name][0][0].data_ptr() for b in recorder.batches}
        assert ptrs == {buffers[0][name][0][0].data_ptr()}, name
    # the buffers hold the last iteration's batches (copied in, not replaced)
    assert torch.equal(buffers[0]["hpo"][0][0], engine.problems["hpo"].cur_batch[0])
    assert_same_parameters(parameters(eager), parameters(engine))


def test_static_buffer_path_compiling_in_the_background(recorder, monkeypatch):
    """The background compilation's dry call (on copies) and the switch to the compiled
    function on the CUDA path: equal to eager, every compiled call staged."""
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "0")
    monkeypatch.setenv("MLODSL_COMPILE_COST", "0")
    eager = mlo_engine("darts", METHODS["darts"], compile=False)
    eager.run()
    monkeypatch.setattr(capture, "compile_options", lambda device, backend: {
        "mode": "reduce-overhead"})
    engine = mlo_engine("darts", METHODS["darts"], compile=True)
    engine.run()
    engine.whole_iteration.wait()
    whole = engine.whole_iteration
    assert whole.captured_iterations > 0
    # the dry call plus one call per captured iteration reached the compiled function
    assert len(recorder.batches) == whole.captured_iterations + 1
    assert whole.static_buffers()[("classifier", "hpo")]["fills"] == whole.captured_iterations
    assert_same_parameters(parameters(eager), parameters(engine))
