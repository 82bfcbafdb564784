"""Checkpoints: exact resumption (in process, after SIGKILL, after SIGTERM), atomic files, keep-K."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support import mlp_hpo as P
from mlodsl import MLOError
from mlodsl.runtime import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def _run(engine):
    engine.history.console = False
    engine.run()
    return engine


def _same(a, b, tol=0.0):
    pa, pb = P.params_of(a) if not isinstance(a, dict) else a, \
        P.params_of(b) if not isinstance(b, dict) else b
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=tol, rtol=0), k


def test_resume_from_every_checkpoint_matches_uninterrupted_run(tmp_path):
    # batch 16 over 96 points: epochs end at iterations 6, 12, ...; the upper (every 2) on
    # 64 points; checkpoints mid-epoch and at epoch ends both resume exactly.
    ref = _run(P.build(20))
    d = tmp_path / "ck"
    _run(P.build(13, engine_kwargs=dict(checkpoint_every=1, checkpoint_dir=str(d),
                                        checkpoint_keep=0)))
    files = ckpt.list_checkpoints(d)
    assert [f.name for f in files][:3] == ["ckpt-00000001.pt", "ckpt-00000002.pt",
                                            "ckpt-00000003.pt"]
    for path in (files[4], files[5], files[12]):  # iterations 5, 6 (epoch end), 13
        e = P.build(20)
        ckpt.load_checkpoint(e, path)
        _run(e)
        _same(ref, e)
        assert e.history.validation() == ref.history.validation()


def test_resume_from_config_and_fresh_start_when_empty(tmp_path):
    d = str(tmp_path / "ck")
    first = _run(P.build(8, engine_kwargs=dict(checkpoint_dir=d, resume_from=d,
                                               checkpoint_every=4)))
    assert first.global_step == 8
    resumed = P.build(16, engine_kwargs=dict(checkpoint_dir=d, resume_from=d))
    _run(resumed)
    _same(_run(P.build(16)), resumed)
    assert any("resumed from" in r.get("message", "") for r in resumed.history.records)


def test_engine_resume_method_and_state_contents(tmp_path):
    d = tmp_path / "ck"
    e = _run(P.build(6, engine_kwargs=dict(checkpoint_dir=str(d))))  # final checkpoint only
    assert [f.name for f in ckpt.list_checkpoints(d)] == ["ckpt-00000006.pt"]
    state = torch.load(ckpt.list_checkpoints(d)[0], weights_only=True)  # plain data only
    assert state["global_step"] == 6
    assert state["problems"]["lower"]["count"] == 6 and state["problems"]["upper"]["count"] == 3
    assert state["schedule"]["steps"] == {"upper": 3, "lower": 6}
    assert set(state["ranks"][0]["rng"]) >= {"torch", "python", "numpy"}
    assert state["ranks"][0]["data"]["lower"]["position"] == 6
    fresh = P.build(10)
    assert fresh.resume(str(d)) is True
    assert fresh.global_step == 6 and fresh.lower.count == 6
    _same(e, fresh)
    assert P.build(10).resume(str(tmp_path / "empty")) is False


def test_keep_last_k_atomic_and_corrupt_latest_falls_back(tmp_path):
    d = tmp_path / "ck"
    _run(P.build(7, engine_kwargs=dict(checkpoint_every=2, checkpoint_dir=str(d),
                                       checkpoint_keep=2)))
    names = sorted(os.listdir(d))
    assert names == ["ckpt-00000006.pt", "ckpt-00000007.pt"]  # 2, 4 pruned; no temp files
    (d / "ckpt-00000007.pt").write_bytes(b"torn")  # e.g. a full disk
    e = P.build(10)
    assert e.resume(str(d)) and e.global_step == 6
    (d / "ckpt-00000006.pt").write_bytes(b"also torn")
    with pytest.raises(MLOError, match="no readable checkpoint"):
        P.build(10).resume(str(d))


def test_checkpoint_of_another_program_is_refused(tmp_path):
    d = tmp_path / "ck"
    _run(P.build(2, engine_kwargs=dict(checkpoint_dir=str(d))))
    state = torch.load(ckpt.list_checkpoints(d)[0], weights_only=True)
    del state["problems"]["upper"], state["meta"]["problems"]["upper"]
    state["checksum"] = ckpt.state_checksum(state)  # intact, but of another program
    torch.save(state, d / "ckpt-00000003.pt")
    with pytest.raises(MLOError, match="does not match this program: problem.s. upper not in"):
        P.build(5).resume(str(d))


def test_checkpoint_every_needs_a_directory():
    with pytest.raises(MLOError, match="checkpoint_dir"):
        P.build(2, engine_kwargs=dict(checkpoint_every=1)).run()


def _start(tmp_path, iters, slow):
    cmd = [sys.executable, "-m", "tests.support.mlp_hpo", "--iters", str(iters), "--ckpt",
           str(tmp_path / "ck"), "--out", str(tmp_path / "out.pt"), "--slow", str(slow)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT), cmd, env


def _wait_for_iter(proc, n, timeout=60):
    deadline = time.time() + timeout
    for line in proc.stdout:
        if line.startswith("ITER ") and int(line.split()[1]) >= n:
            return
        assert time.time() < deadline, "the child never reached the iteration"
    raise AssertionError("child exited early: " + proc.stderr.read())


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path):
    # SIGTERM first (a final checkpoint, exit 143), then SIGKILL of the resumed run (the last
    # periodic checkpoint), then a resume to the end: the uninterrupted run's parameters.
    iters = 30
    last = 0
    for sig, at in ((signal.SIGTERM, 8), (signal.SIGKILL, 16)):
        proc, cmd, env = _start(tmp_path, iters, slow=0.02)
        _wait_for_iter(proc, at)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        expected = 143 if sig == signal.SIGTERM else -signal.SIGKILL
        assert proc.returncode == expected, proc.stderr.read()
        saved = ckpt.list_checkpoints(tmp_path / "ck")
        assert saved and len(saved) <= 3  # checkpoint_keep=2, and the best validation
        stopped_at = int(saved[-1].stem.split("-")[1])
        # ITER n is printed just before checkpoint n; SIGTERM finishes the iteration it hit
        assert max(at - 1, last + 1) <= stopped_at < iters
        last = stopped_at
    done = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    torch.set_num_threads(1)
    _same(torch.load(tmp_path / "out.pt"), _run(P.build(iters, engine_kwargs={"valid_step": 5})))

def test_unrolled_windows_defer_checkpoints_and_still_resume_exactly(tmp_path):
    d = tmp_path / "ck"
    unroll = lambda: P.Config(type="unroll", unroll_steps=2)  # noqa: E731
    ref = _run(P.build(10, upper_config=unroll()))
    _run(P.build(7, upper_config=unroll(),
                 engine_kwargs=dict(checkpoint_every=1, checkpoint_dir=str(d),
                                    checkpoint_keep=0)))
    # odd iterations end inside the lower's unrolled window: no checkpoint there (nor at the
    # end, iteration 7)
    assert [f.name for f in ckpt.list_checkpoints(d)] == [
        "ckpt-00000002.pt", "ckpt-00000004.pt", "ckpt-00000006.pt"]
    e = P.build(10, upper_config=unroll())
    assert e.resume(str(d)) and e.global_step == 6
    _same(ref, _run(e))
