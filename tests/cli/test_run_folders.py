"""`mlodsl run` keeps run folders whole: periodic checkpoints, SIGKILL and resume, one run per
folder (a lock), no silent reuse, verified checkpoints, failed writes, odd metrics lines."""
import json
import os
import re
import subprocess

import pytest
import torch

from tests.support.runs import (cli, file_size_limit, kill, mlodsl, params, program, records,
                                start, wait_for)


def _ckpts(run):
    return sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt"))


def _train(recs):
    return [(r["iteration"], r["step"], r["loss"]) for r in recs if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_during_training_and_during_resume_loses_nothing(tmp_path, capsys):
    prog = program(tmp_path, iterations=100000, every=3, delay=0.01)
    run = tmp_path / "run"
    p = start("run", prog, "--out", run, "--quiet")
    wait_for(lambda: (run / "checkpoints" / "ckpt-00000006.pt").exists(), p)
    kill(p)  # a SIGKILL: no handler runs, only the periodic checkpoints remain
    assert (run / "run.lock").exists()  # a killed run's lock is left behind
    last = int(_ckpts(run)[-1][5:13])
    total = last + 7
    # Killed again, this time while resuming: right after compiling, as the engine loads the
    # checkpoint, rewrites metrics.jsonl and takes its first steps.
    p = start("run", prog, "--resume", run, "--iterations", total, "--quiet")
    for line in p.stderr:
        if line.startswith("mlodsl: running"):
            break
    kill(p)
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", total, "--quiet")
    assert status == 0, err
    assert "no longer running" in err and "taking it over" in err
    ref = tmp_path / "ref"
    assert cli(capsys, "run", prog, "--out", ref, "--iterations", total, "--quiet")[0] == 0
    # Bit-identical parameters and the same training records, each exactly once.
    got, want = params(run / "checkpoints" / f"ckpt-{total:08d}.pt"), \
        params(ref / "checkpoints" / f"ckpt-{total:08d}.pt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert _train(records(run)) == _train(records(ref))
    assert [r for r in records(run) if r["kind"] == "validation"] == \
        [r for r in records(ref) if r["kind"] == "validation"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == total and summary["status"] == "finished"


def test_checkpoint_every_from_the_engine_block_and_set(tmp_path, capsys):
    prog = program(tmp_path, iterations=8, every=100, validate_every=3, keep=1)
    run = tmp_path / "run"
    status, _, err = cli(capsys, "run", prog, "--out", run, "--set", "engine.checkpoint_every=3",
                         "--quiet")
    assert status == 0, err
    # keep 1 (checkpoint_keep): the final one, plus the best validated one (6: the loss falls)
    assert _ckpts(run) == ["ckpt-00000006.pt", "ckpt-00000008.pt"]
    assert (run / "checkpoints" / "best.txt").read_text().startswith("ckpt-00000006.pt loss min")
    cli(capsys, "run", prog, "--out", tmp_path / "r2", "--set", "engine.checkpoint_keep=5",
        "--set", "engine.checkpoint_every=2", "--quiet")
    assert _ckpts(tmp_path / "r2") == [f"ckpt-0000000{i}.pt" for i in (2, 4, 6, 8)]


def test_a_second_run_on_a_folder_fails_at_once_and_a_dead_runs_lock_is_taken_over(tmp_path,
                                                                                   capsys):
    prog = program(tmp_path, iterations=100000, every=2, delay=0.01)
    run = tmp_path / "run"
    p = start("run", prog, "--out", run, "--quiet")
    wait_for(lambda: (run / "checkpoints" / "ckpt-00000002.pt").exists(), p)
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--quiet")
    assert status == 2
    assert re.search(rf"run folder {re.escape(str(run))} is in use by another run \(pid "
                     rf"{p.pid} on ", err), err
    status, _, err = cli(capsys, "run", prog, "--out", run, "--quiet")
    assert status == 2 and "is in use" in err
    kill(p)
    assert (run / "run.lock").read_text().startswith(f"pid {p.pid} ")  # stale, left behind
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", 30, "--quiet")
    assert status == 0, err
    assert f"was locked by a run that is no longer running (pid {p.pid}" in err
    assert not (run / "run.lock").exists()


def test_a_new_run_never_reuses_a_folder_and_resume_needs_a_checkpoint(tmp_path, capsys):
    prog = program(tmp_path, iterations=4)
    run = tmp_path / "run"
    assert cli(capsys, "run", prog, "--out", run, "--quiet")[0] == 0
    before = {f: (run / f).read_bytes() for f in ("metrics.jsonl", "summary.json")}
    status, _, err = cli(capsys, "run", prog, "--out", run, "--quiet")
    assert status == 2
    assert f"run folder {run} already holds a run" in err and "--resume" in err
    assert {f: (run / f).read_bytes() for f in before} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = cli(capsys, "run", prog, "--resume", empty, "--quiet")
    assert status == 2 and "no checkpoint in" in err
    status, _, err = cli(capsys, "run", prog, "--resume", tmp_path / "missing", "--quiet")
    assert status == 2 and not (tmp_path / "missing").exists()
    (tmp_path / "afile").write_text("x")
    status, _, err = cli(capsys, "run", prog, "--out", tmp_path / "afile", "--quiet")
    assert status == 2 and "a file is in the way" in err
    # A folder that cannot be written is found before anything is compiled or trained.
    status, _, err = cli(capsys, "run", prog, "--out", "/proc/mlodsl-run", "--quiet")
    assert status == 2 and "cannot write to the run folder /proc/mlodsl-run" in err
    # A compile error leaves no empty run folder behind.
    status, _, err = cli(capsys, "run", prog, "--out", tmp_path / "new", "--set", "n=x")
    assert status == 2 and not (tmp_path / "new").exists()


def test_resume_truncates_metrics_atomically_and_keeps_odd_lines(tmp_path, capsys):
    prog = program(tmp_path, iterations=8, every=4)
    run = tmp_path / "run"
    assert cli(capsys, "run", prog, "--out", run, "--quiet")[0] == 0
    os.remove(run / "checkpoints" / "ckpt-00000008.pt")  # as if killed after iteration 8
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: its temporary files are stale
    stale = run / "checkpoints" / f".ckpt-00000008.pt.{gone.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe not utf-8\n[1, 2]\n")
    n = len((run / "metrics.jsonl").read_bytes().splitlines())
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", 10, "--quiet")
    assert status == 0, err
    assert f"metrics.jsonl:{n - 1}: skipped a line that is not UTF-8" in err
    assert f"metrics.jsonl:{n}: skipped a line that is a JSON list, not an object" in err
    assert not stale.exists()
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    assert b"\xff\xfe not utf-8" in lines and b"[1, 2]" in lines  # kept, not ours to drop
    steps = [s for _, s, _ in _train(records(run))]
    assert steps == list(range(1, 11))  # 5..8 of the first run dropped, then 5..10 again
    status, _, err = cli(capsys, "plot", run, "-o", tmp_path / "c.png")
    assert status == 0, err
    assert "skipped a line that is not UTF-8" in err


def test_a_resume_that_cannot_rewrite_metrics_leaves_them_whole(tmp_path, capsys):
    prog = program(tmp_path, iterations=12, every=4)
    run = tmp_path / "run"
    assert cli(capsys, "run", prog, "--out", run, "--quiet")[0] == 0
    os.remove(run / "checkpoints" / "ckpt-00000012.pt")
    before = (run / "metrics.jsonl").read_bytes()
    r = mlodsl("run", prog, "--resume", run, "--iterations", 14, "--quiet",
               preexec_fn=file_size_limit(len(before) // 2))
    assert r.returncode == 1, r.stderr
    assert "cannot rewrite" in r.stderr and "the file is unchanged" in r.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


def test_a_full_disk_keeps_training_reports_and_still_writes_the_summary(tmp_path):
    # Checkpoints of a 64x64 layer (about 17 kB) do not fit under a 12 kB file-size limit;
    # metrics lines and summary.json do.
    prog = program(tmp_path, iterations=6, every=2, width=64, extra="")
    prog.write_text(prog.read_text().replace("Tiny(n, width)", "Tiny(64, width)")
                    .replace("let n = 4", "let n = 64"))
    run = tmp_path / "run"
    r = mlodsl("run", prog, "--out", run, "--quiet", preexec_fn=file_size_limit(12000))
    assert r.returncode == 1, r.stderr
    warned = re.findall(r"warning: could not write checkpoint \S+ckpt-0000000(\d)\.pt: File too "
                        r"large; training goes on, the next try is at iteration (\d)", r.stderr)
    assert warned == [("2", "4"), ("4", "6")], r.stderr
    assert "error: could not write checkpoint" in r.stderr and "ckpt-00000006.pt" in r.stderr
    assert "the state of iteration 6 is not saved" in r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 6 and summary["status"] == "failed"
    assert os.listdir(run / "checkpoints") == []  # no partial or temporary files
    assert [r["step"] for r in records(run) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_corrupted_and_mismatched_checkpoints_are_refused_with_reasons(tmp_path, capsys):
    prog = program(tmp_path, iterations=8, every=4)
    run = tmp_path / "run"
    assert cli(capsys, "run", prog, "--out", run, "--quiet")[0] == 0
    ck = run / "checkpoints"
    # Another program: other shapes, another optimizer.
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--set", "n=5", "--quiet")
    assert status == 2
    assert "does not match this program: problem 'inner': 'fc.weight' has shape [1, 4] in " \
           "the checkpoint, [1, 5] in this program" in err
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--set",
                         "inner.optimizer=Adam(lr=0.01)", "--quiet")
    assert status == 2
    assert "problem 'inner': optimizer SGD in the checkpoint, Adam in this program" in err
    # A learning rate the resume cannot honour is reported.
    good = ck / "ckpt-00000008.pt"
    saved = good.read_bytes()
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", 9, "--quiet",
                         "--set", "inner.optimizer.lr=0.5")
    assert status == 0, err
    assert "the optimizer's lr=0.5 is not used: the resumed optimizer keeps the checkpoint's " \
           "lr=0.05" in err
    # Flipped bits in the newest checkpoint: refused, and the resume says it falls back.
    newest = ck / "ckpt-00000009.pt"
    data = bytearray(newest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    newest.write_bytes(bytes(data))
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", 10, "--quiet")
    assert status == 0, err
    assert re.search(r"warning: .*ckpt-00000009\.pt (is corrupted|cannot be read|).*; falling "
                     r"back to the older ckpt-00000008\.pt", err) or \
        "falling back to the older ckpt-00000008.pt" in err, err
    # Nothing usable at all: an error.
    for f in ck.glob("ckpt-*.pt"):
        f.write_bytes(b"torn")
    status, _, err = cli(capsys, "run", prog, "--resume", run, "--iterations", 12, "--quiet")
    assert status == 1 and "no readable checkpoint in" in err, err
    assert saved  # (the good bytes were read before the corruption)
