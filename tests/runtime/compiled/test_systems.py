"""Checkpoints, resume and the divergence guard keep working under compile = True."""
import pytest
import torch

from mlodsl import MLOError
from tests.support.compiled_programs import (api_engine, assert_same_parameters, mlo_engine,
                                             parameters)


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "python")


def test_resume_continues_the_captured_run_exactly(tmp_path):
    """20 iterations with checkpoints, then a fresh engine resumes to 40: the same parameters
    as 40 straight iterations (compiled and eager)."""
    ck = str(tmp_path / "ck")
    first = api_engine("neumann", compile=True, iterations=20,
                       engine=dict(checkpoint_every=10, checkpoint_dir=ck))
    first.run()
    resumed = api_engine("neumann", compile=True, iterations=40,
                         engine=dict(checkpoint_dir=ck, resume_from=ck))
    resumed.run()
    assert resumed.whole_iteration.captured_iterations >= 19
    straight = api_engine("neumann", compile=True, iterations=40)
    straight.run()
    eager = api_engine("neumann", compile=False, iterations=40)
    eager.run()
    assert_same_parameters(parameters(straight), parameters(resumed))
    assert_same_parameters(parameters(eager), parameters(resumed))


def test_divergence_is_caught_at_the_same_iteration_as_eager():
    """A lower learning rate that blows up: the run stops with the eager run's message."""
    messages = []
    for compile in (False, True):
        engine = mlo_engine("darts", "alpha=0.01", compile=compile, iterations=50,
                            lower_opt="SGD(lr=200.0, momentum=0.9)")
        with pytest.raises(MLOError, match="NaN or infinite at iteration") as err:
            engine.run()
        messages.append(str(err.value))
        if compile:
            assert engine.whole_iteration.captured_iterations > 0
    assert messages[0] == messages[1]


def test_lr_scheduler_steps_outside_the_graph():
    """A StepLR on the lower: the learning rate is a tensor input, so nothing recompiles and
    the numbers are the eager engine's."""
    def sched_engine(compile):
        engine = api_engine("darts", compile=compile, iterations=30, darts_alpha=0.01)
        opt = engine.problems["classifier"].optimizer
        engine.problems["classifier"].scheduler = torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)
        return engine

    eager, captured = sched_engine(False), sched_engine(True)
    eager.run()
    captured.run()
    assert captured.problems["classifier"].optimizer.param_groups[0]["lr"] == pytest.approx(
        0.1 * 0.5 ** 4)
    assert_same_parameters(parameters(eager), parameters(captured))


def test_training_state_holds_the_captured_state():
    """The captured function writes parameters and optimizer states into the live tensors,
    so engine.training_state() (what checkpoints save) is the eager engine's."""
    states = []
    for compile in (False, True):
        engine = api_engine("cg", compile=compile, iterations=12, cg_iterations=2)
        engine.run()
        states.append(engine.training_state())
    eager, captured = states
    assert captured.global_step == eager.global_step == 12
    for name in ("classifier", "hpo"):
        assert captured.problems[name].count == eager.problems[name].count
        for key, t in eager.problems[name].module.items():
            _close(captured.problems[name].module[key], t)
        opt_e = eager.problems[name].optimizer["state"]
        opt_c = captured.problems[name].optimizer["state"]
        assert opt_e.keys() == opt_c.keys()
        for i in opt_e:
            for k, v in opt_e[i].items():
                _close(opt_c[i][k], v)


def _close(a, b, rtol=1e-5):
    """Agreement on the tensor's own scale (rounding in small entries is not a difference)."""
    scale = b.abs().max().clamp_min(1e-12)
    assert float((a - b).abs().max() / scale) <= rtol
