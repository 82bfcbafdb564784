"""`mlodsl run --nproc 2` (gloo, CPU): checkpoints from a distributed run; a rank that dies or
hangs ends every rank with a clear message, within the engine's `timeout`."""
import json

import pytest

from tests.support.runs import mlodsl, program


@pytest.mark.slow
def test_a_distributed_run_writes_periodic_checkpoints_and_ends_cleanly(tmp_path):
    prog = program(tmp_path, iterations=8, every=4)
    r = mlodsl("run", prog, "--nproc", 2, "--out", tmp_path / "run", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*")) == \
        ["ckpt-00000004.pt", "ckpt-00000008.pt"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_dead_or_hung_rank_ends_every_rank_with_a_message(tmp_path, how):
    # Rank 1's third step kills its process, or sleeps for an hour; the timeout is 3 s.
    prog = program(tmp_path, iterations=50, every=10, loss=f'fail_on_rank(1, 3, "{how}")',
                   extra="    timeout = 3\n")
    r = mlodsl("run", prog, "--nproc", 2, "--out", tmp_path / "run", "--quiet", timeout=240)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    if how == "die":
        assert "mlodsl: error: distributed run failed: rank 1 was killed by SIGKILL" in r.stderr
    else:  # rank 0 gives up after the timeout; rank 1 is stopped and cannot finish its step
        assert "error: rank 0 of 2: averaging gradients (all_reduce) failed: another rank " \
               "stopped or did not answer within the timeout of 3 s" in r.stderr
        assert "rank 1: stopped by SIGTERM and still not at the end of iteration" in r.stderr
        assert "mlodsl: error: distributed run failed: rank 0 ended with exit status 1\n" \
               "  then rank 1 stopped on SIGTERM (exit status 143)" in r.stderr
