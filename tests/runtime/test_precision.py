"""Mixed precision: autocast around every loss evaluation, a gradient scaler for fp16."""
import pytest
import torch

from tests.support import mlp_hpo as P
from mlodsl import Config, MLOError
from mlodsl.runtime.config import EngineConfig


def _record_autocast(engine):
    seen = []
    for prob in engine.problems.values():
        original = type(prob).training_step

        def step(batch, prob=prob, original=original):
            seen.append((prob.name, torch.is_autocast_enabled("cpu"),
                         torch.get_autocast_dtype("cpu")))
            return original(prob, batch)

        prob.training_step = step
    return seen


def test_bf16_autocasts_own_steps_not_finite_differences_and_keeps_fp32_parameters():
    e = P.build(6, engine_kwargs=dict(precision="bf16"))
    e.history.console = False
    seen = _record_autocast(e)
    e.run()
    # both problems' own steps run under autocast; darts' two lower-loss evaluations per upper
    # step (a finite difference) run without it, in the parameters' float32
    autocast = [(name, dtype) for name, on, dtype in seen if on]
    full = [name for name, on, _ in seen if not on]
    assert {name for name, _ in autocast} == {"lower", "upper"}
    assert all(dtype == torch.bfloat16 for _, dtype in autocast)
    upper_steps = sum(1 for name, _ in autocast if name == "upper")
    assert upper_steps >= 3 and full == ["lower"] * (2 * upper_steps)
    assert all(v.dtype == torch.float32 for v in P.params_of(e).values())
    assert all(torch.isfinite(v).all() for v in P.params_of(e).values())
    assert e.precision.scalers == {}


def test_bf16_stays_close_to_fp32():
    ref = P.build(10)
    ref.history.console = False
    ref.run()
    low = P.build(10, engine_kwargs=dict(precision="bf16"))
    low.history.console = False
    low.run()
    a, b = P.params_of(ref), P.params_of(low)
    for k in a:
        assert (a[k] - b[k]).abs().max() < 0.05, k


def test_problem_config_precision_overrides_the_engine():
    e = P.build(4, lower_config=Config(precision="bf16"))
    e.history.console = False
    seen = _record_autocast(e)
    e.run()
    # the lower's own steps autocast, the upper never (darts' evaluations of the lower run
    # without autocast in any case)
    assert {n for n, on, _ in seen if on} == {"lower"}
    assert "upper" in {n for n, on, _ in seen if not on}


def test_fp16_uses_a_gradient_scaler_and_checkpoints_it(tmp_path):
    e = P.build(6, engine_kwargs=dict(precision="fp16", checkpoint_dir=str(tmp_path)))
    e.history.console = False
    assert set(e.precision.scalers) == {"lower", "upper"}
    before = P.params_of(e)
    e.run()
    after = P.params_of(e)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    state = torch.load(next(tmp_path.iterdir()), weights_only=True)
    assert set(state["precision"]) == {"lower", "upper"}
    assert state["precision"]["lower"]["scale"] > 0


def test_fp16_scaled_gradients_are_unscaled_before_the_step():
    # With a huge initial scale the first steps overflow and are skipped by the scaler, never
    # applied; once the scale has come down, steps go through, unscaled (finite, small moves).
    e = P.build(8, engine_kwargs=dict(precision="fp16"),
                lower_config=Config(initial_dynamic_scale=2.0 ** 60))
    e.history.console = False
    e.run()
    assert e.precision.scalers["lower"].get_scale() < 2.0 ** 60
    assert all(torch.isfinite(v).all() for v in P.params_of(e).values())


def test_precision_is_validated():
    with pytest.raises(MLOError, match="precision"):
        EngineConfig(precision="fp8")
