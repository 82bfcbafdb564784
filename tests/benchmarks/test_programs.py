"""The benchmark programs still run (a few iterations each): no timings are asserted.

Betty is not installed in CI, so only mlodsl's sides run here (the interleaved harness leaves
Betty out when its venv is missing; it is given mlodsl's sides).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _result(stdout: str) -> dict:
    line = next(l for l in stdout.splitlines() if l.startswith("BENCH_RESULT "))
    return json.loads(line.split(" ", 1)[1])


pytestmark = pytest.mark.slow  # each test starts fresh Python processes (imports: seconds)


def test_reweight_program_reports_a_result():
    out = subprocess.run([sys.executable, str(BENCH / "programs" / "reweight_mlodsl.py"),
                          "--method", "darts", "--unroll", "2", "--iters", "2", "--warmup", "1",
                          "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    res = _result(out.stdout)
    assert res["error"] is None, res.get("traceback")
    assert res["library"] == "mlodsl" and res["median_cpu_seconds_per_iter"] > 0
    assert res["test_loss"] == res["test_loss"]  # finite, not NaN


def test_python_api_and_mlo_programs_compute_the_same_run():
    losses = []
    for script in ("hpo_mlodsl.py", "hpo_mlo.py"):
        out = subprocess.run([sys.executable, str(BENCH / "programs" / script), "--method",
                              "darts", "--iters", "3", "--warmup", "1", "--json"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        res = _result(out.stdout)
        assert res["error"] is None, res.get("traceback")
        assert res["library"] == "mlodsl" and res["median_cpu_seconds_per_iter"] > 0
        losses.append(res["test_loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_tensor_memory_pass():
    out = subprocess.run([sys.executable, str(BENCH / "programs" / "hpo_mlodsl.py"), "--iters",
                          "2", "--warmup", "1", "--tensor-memory", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    res = _result(out.stdout)
    assert res["error"] is None and res["peak_tensor_mb"] > 1.0  # at least the live gradients


def test_interleaved_runs_without_betty():
    out = subprocess.run([sys.executable, str(BENCH / "interleaved.py"), "--sides", "mlodsl,mlo",
                          "--rounds", "2", "--warmup-rounds", "0", "--chunk", "1", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["sides"]) == {"mlodsl", "mlo"} and res["baseline"] == "mlodsl"
    assert res["sides"]["mlodsl"]["ratio_to_baseline_median"] == 1.0
