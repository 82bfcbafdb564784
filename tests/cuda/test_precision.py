"""Mixed precision on the device under test: bf16 autocast and the fp16 gradient scaler run
the problems' own steps under autocast and darts' finite difference without it, keep fp32
parameters on the device, and train (the loss goes down)."""
import pytest
import torch

from tests.support import cuda as H

pytestmark = H.requires_device


def _record_autocast(engine):
    seen = []
    for prob in engine.problems.values():
        original = type(prob).training_step

        def step(batch, prob=prob, original=original):
            seen.append((prob.name, torch.is_autocast_enabled(H.DEVICE.type),
                         torch.get_autocast_dtype(H.DEVICE.type)))
            return original(prob, batch)

        prob.training_step = step
    return seen


def _falls(trace, factor=0.8):
    first, last = sum(trace[:5]) / 5, sum(trace[-5:]) / 5
    return last < factor * first, (first, last)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_trains_on_the_device(precision, dtype):
    engine = H.mlp_engine(H.DEVICE, iters=40, engine_kwargs=dict(precision=precision))
    seen = _record_autocast(engine)
    trap = H.CPUTensorTrap()
    with trap:
        engine.run()
    assert trap.hits == [], trap.hits
    assert H.placement_errors(engine) == []
    # the lowers' own steps and the upper's under autocast; darts' two evaluations of the
    # lower per upper step (a finite difference) without it
    autocast = [(n, dt) for n, on, dt in seen if on]
    full = [n for n, on, _ in seen if not on]
    assert {n for n, _ in autocast} == {"lower", "upper"}
    assert all(dt == dtype for _, dt in autocast), set(seen)
    upper_steps = sum(1 for n, _ in autocast if n == "upper")
    assert upper_steps >= 10 and full == ["lower"] * (2 * upper_steps)
    for p in engine.problems.values():
        assert all(v.dtype == torch.float32 for v in p.module.parameters())
    assert all(torch.isfinite(v).all() for v in H.params_cpu(engine).values())
    ok, (first, last) = _falls(engine.trace)
    assert ok, f"lower loss did not fall: {first:.4f} -> {last:.4f}"
    if precision == "fp16":
        assert set(engine.precision.scalers) == {"lower", "upper"}
        for s in engine.precision.scalers.values():
            assert s.is_enabled() and s.get_scale() > 0
            assert H.same_device(s._scale)
    else:
        assert engine.precision.scalers == {}


def test_fp16_overflowing_scale_skips_steps_on_the_device():
    """A huge initial scale overflows fp16 gradients: the scaler skips and lowers the scale."""
    engine = H.mlp_engine(H.DEVICE, iters=8, engine_kwargs=dict(precision="fp16"),
                          lower_config=dict(initial_dynamic_scale=2.0 ** 60))
    engine.run()
    assert engine.precision.scalers["lower"].get_scale() < 2.0 ** 60
    assert all(torch.isfinite(v).all() for v in H.params_cpu(engine).values())


def test_bf16_unroll_on_the_device():
    """Unrolled (differentiable) steps under bf16 autocast: no scaler, finite, on the device."""
    engine = H.mlp_engine(H.DEVICE, iters=9, method="unroll", every=3, iterative=True,
                          upper_config=dict(first_order=False),
                          engine_kwargs=dict(precision="bf16"))
    engine.run()
    assert engine.precision.scalers == {}
    assert H.placement_errors(engine) == []
    assert all(torch.isfinite(v).all() for v in H.params_cpu(engine).values())
