"""Checkpoints across devices: written on the device under test, resumed there and on the CPU
(and the other way round), with the same parameters as an uninterrupted run."""
import torch

from tests.support import cuda as H
from mlodsl.runtime import checkpoint as ckpt

pytestmark = H.requires_device

F64 = dict(dtype=torch.float64)


def _engine(device, iters, **kw):
    return H.mlp_engine(device, iters=iters, engine_kwargs=kw, **F64)


def test_save_on_the_device_resume_on_the_device_and_on_the_cpu(tmp_path):
    d = tmp_path / "ck"
    first = _engine(H.DEVICE, 6, checkpoint_every=3, checkpoint_dir=str(d))
    first.run()
    files = ckpt.list_checkpoints(d)
    assert [f.name for f in files] == ["ckpt-00000003.pt", "ckpt-00000006.pt"]
    state = torch.load(files[-1], map_location="cpu", weights_only=True)
    if H.ON_GPU:
        assert "cuda" in state["ranks"][0]["rng"]  # the CUDA generator is saved too

    ref_dev = _engine(H.DEVICE, 12)
    ref_dev.run()
    ref_cpu = _engine(H.CPU, 12)
    ref_cpu.run()

    on_dev = _engine(H.DEVICE, 12, resume_from=str(d))
    on_dev.run()
    assert on_dev.global_step == 12
    assert H.placement_errors(on_dev) == []
    for k, v in H.params_cpu(ref_dev).items():
        assert H.close(H.params_cpu(on_dev)[k], v, rtol=1e-10, atol=1e-12), k

    on_cpu = _engine(H.CPU, 12, resume_from=str(d))
    on_cpu.run()
    assert H.placement_errors(on_cpu, H.CPU) == []
    for k, v in H.params_cpu(ref_cpu).items():
        assert H.close(H.params_cpu(on_cpu)[k], v, rtol=1e-8, atol=1e-10), k
    bn_dev = on_dev.problems["lower"].module.bn.running_mean
    bn_cpu = on_cpu.problems["lower"].module.bn.running_mean
    assert H.close(bn_dev, bn_cpu, rtol=1e-8, atol=1e-10)


def test_save_on_the_cpu_resume_on_the_device(tmp_path):
    d = tmp_path / "ck"
    _engine(H.CPU, 5, checkpoint_dir=str(d)).run()  # one final checkpoint at 5
    ref = _engine(H.CPU, 10)
    ref.run()
    resumed = _engine(H.DEVICE, 10, resume_from=str(d))
    resumed.run()
    assert H.placement_errors(resumed) == []
    for k, v in H.params_cpu(ref).items():
        assert H.close(H.params_cpu(resumed)[k], v, rtol=1e-8, atol=1e-10), k


def test_fp16_scaler_state_crosses_devices(tmp_path):
    d = tmp_path / "ck"
    first = H.mlp_engine(H.DEVICE, iters=4, engine_kwargs=dict(
        precision="fp16", checkpoint_dir=str(d)))
    first.run()
    scale = first.precision.scalers["lower"].get_scale()
    for device in (H.DEVICE, H.CPU):
        e = H.mlp_engine(device, iters=6, engine_kwargs=dict(precision="fp16"))
        assert e.resume(str(d))
        assert e.precision.scalers["lower"].get_scale() == scale
        e.run()
        assert H.placement_errors(e, device) == []
        assert all(torch.isfinite(v).all() for v in H.params_cpu(e).values())


def test_method_state_follows_the_resuming_engine(tmp_path):
    """reinforce's baseline (a tensor in the per-edge state) comes back on the new device."""
    for src, dst in ((H.CPU, H.DEVICE), (H.DEVICE, H.CPU)):
        d = tmp_path / f"ck-{src.type}-{dst.type}"
        e = H.reinforce_engine(src, iters=5)
        e.config.checkpoint_dir = str(d)
        e.run()
        r = H.reinforce_engine(dst, iters=8)
        assert r.resume(str(d))
        baseline = r.method_state("upper", "lower")["baseline"]
        assert H.same_device(baseline, dst), (baseline.device, dst)
        r.run()
        assert H.placement_errors(r, dst) == []
