"""The .mlo route on the device under test: ``mlodsl.compile`` with a device override, and
``mlodsl run --device`` as a subprocess (the repository need not be installed: PYTHONPATH)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import cuda as H
import mlodsl
from mlodsl import MLOError

pytestmark = H.requires_device

HPO = H.ROOT / "examples" / "hpo" / "hpo.mlo"
DEV = "cuda" if H.ON_GPU else str(H.DEVICE)


def _cli(*argv, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(H.ROOT)] + [p for p in
                                        env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-m", "mlodsl", *argv], cwd=str(H.ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_compiled_hpo_program_runs_on_the_device():
    plan = mlodsl.compile(str(HPO), overrides={"engine.device": DEV, "engine.iterations": 4})
    trap = H.CPUTensorTrap()
    with trap:
        plan.run(console=False)
    engine = plan.engine
    assert engine.global_step == 4
    assert trap.hits == [], trap.hits
    assert H.placement_errors(engine) == []
    for info in plan.losses.values():  # the fx loss graphs' constants follow the modules
        if info.graph is not None:
            for name, t in list(info.graph.named_buffers()):
                assert H.same_device(t), name
    assert plan.final_validation() is not None


def test_mlodsl_run_with_device_exits_0(tmp_path):
    out = tmp_path / "run"
    r = _cli("run", str(HPO), "--device", DEV, "--iterations", "3", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3
    assert all(v == v for v in summary["last_loss"].values())  # not NaN


def test_mlodsl_run_on_a_missing_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    r = _cli("run", str(HPO), "--set", 'engine.device="cuda:7"', "--iterations", "2",
             "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode in (1, 2), (r.returncode, r.stderr[-2000:])
    assert "cuda:7" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    with pytest.raises(MLOError, match="cuda:7"):
        mlodsl.compile(str(HPO), overrides={"engine.device": "cuda:7"}).build_engine()
