"""Checkpoints through the Python API: `checkpoint_every` under the run folder, a failed write
retried, a reused run_dir refused, verified loading (checksum, program match, old format)."""
import os

import pytest
import torch

import mlodsl
from mlodsl import MLOError
from mlodsl.runtime import checkpoint as ckpt
from tests.support.runs import PROGRAM


def _compile(tmp_path, **kw):
    values = dict(iterations=6, every=2, width=1, loss="mse(0.0)", keep=0, validate_every=3,
                  extra="")
    values.update(kw)
    src = tmp_path / "prog.mlo"
    src.write_text(PROGRAM.format(**values))
    return mlodsl.compile(str(src))


def _warnings(plan):
    return [r["message"] for r in plan.engine.history.records if r["kind"] == "warning"]


def test_checkpoint_every_goes_under_the_run_folder(tmp_path):
    plan = _compile(tmp_path)
    plan.run(run_dir=str(tmp_path / "run"), console=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == \
        ["ckpt-00000002.pt", "ckpt-00000004.pt", "ckpt-00000006.pt"]
    with pytest.raises(MLOError, match="checkpoint_every.*needs somewhere to write"):
        _compile(tmp_path).run(console=False)


def test_a_failed_checkpoint_write_is_reported_and_retried(tmp_path):
    cd = tmp_path / "ck"
    (cd / "ckpt-00000002.pt").mkdir(parents=True)  # the write at iteration 2 cannot land
    plan = _compile(tmp_path)
    plan.run(run_dir=str(tmp_path / "run"), checkpoint_dir=str(cd), console=False)
    assert plan.engine.global_step == 6
    [message] = _warnings(plan)
    assert "could not write checkpoint" in message and "ckpt-00000002.pt" in message
    assert "training goes on, the next try is at iteration 4 (no checkpoint is on disk yet)" \
        in message
    assert sorted(os.listdir(cd)) == ["ckpt-00000002.pt", "ckpt-00000004.pt",
                                      "ckpt-00000006.pt"]  # no temporary file left
    assert (cd / "ckpt-00000002.pt").is_dir()


def test_a_run_dir_holding_another_runs_metrics_is_refused(tmp_path):
    run = str(tmp_path / "run")
    _compile(tmp_path, every=100).run(run_dir=run, console=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(MLOError, match="already holds the metrics of another run"):
        _compile(tmp_path, every=100).run(run_dir=run, console=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before


def test_corrupted_values_are_caught_by_the_checksum_and_fallen_back_from(tmp_path):
    cd = tmp_path / "ck"
    plan = _compile(tmp_path)
    plan.run(checkpoint_dir=str(cd), console=False)
    newest = ckpt.list_checkpoints(cd)[-1]
    state = torch.load(newest, weights_only=True)
    state["problems"]["inner"]["module"]["fc.weight"][0, 0] += 1e-6  # a quiet bit flip
    torch.save(state, newest)
    with pytest.raises(MLOError, match="is corrupted: its content does not match its checksum"):
        ckpt.load_checkpoint(_compile(tmp_path).build_engine(), newest)
    again = _compile(tmp_path, iterations=8)
    engine = again.build_engine()
    assert engine.resume(str(cd)) and engine.global_step == 4
    [message] = _warnings(again)
    assert message.endswith("is corrupted: its content does not match its checksum; falling "
                            "back to the older ckpt-00000004.pt")


def test_a_checkpoint_of_another_shape_names_the_difference(tmp_path):
    cd = tmp_path / "ck"
    _compile(tmp_path).run(checkpoint_dir=str(cd), console=False)
    other = _compile(tmp_path, width=3).build_engine()
    with pytest.raises(MLOError) as info:
        other.resume(str(cd))
    assert "problem 'inner': 'fc.weight' has shape [1, 4] in the checkpoint, [3, 4] in this " \
           "program; problem 'inner': 'fc.bias' has shape [1] in the checkpoint, [3] in this " \
           "program" in str(info.value)
    assert info.value.exit_status == 2


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    cd = tmp_path / "ck"
    _compile(tmp_path).run(checkpoint_dir=str(cd), console=False)
    newest = ckpt.list_checkpoints(cd)[-1]
    state = torch.load(newest, weights_only=True)
    state["format"] = 1
    del state["checksum"], state["meta"]
    torch.save(state, newest)
    engine = _compile(tmp_path, iterations=8).build_engine()
    assert engine.resume(str(cd)) and engine.global_step == 6


def test_an_old_checkpoint_of_another_shape_is_still_a_clear_refusal(tmp_path):
    cd = tmp_path / "ck"
    _compile(tmp_path).run(checkpoint_dir=str(cd), console=False)
    newest = ckpt.list_checkpoints(cd)[-1]
    state = torch.load(newest, weights_only=True)
    del state["checksum"], state["meta"]  # written before descriptions existed
    torch.save(state, newest)
    with pytest.raises(MLOError, match="does not match this program: loading it failed "
                                       r"\(RuntimeError: .*size mismatch"):
        _compile(tmp_path, width=3).build_engine().resume(str(cd))
