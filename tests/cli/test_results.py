"""Results as a first-class output: summary.json/summary.md in every ending, `mlodsl show`,
`mlodsl.load_run` (issue 15), on the 5-feature ridge program (its decays are learned
hyperparameters small enough to print)."""
from __future__ import annotations

import json

import pytest
import torch

import mlodsl
from tests.support.cli import RIDGE, run_cli


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_finished_run_summary_show_and_load_run(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, stderr = run_cli(["run", RIDGE, "--iterations", 12, "--out", out,
                                      "--quiet", "--set", "engine.validate_every=4"], capsys)
    assert status == 0, stderr
    s = _summary(out)
    assert (s["status"], s["stopped_at"], s["iterations"]) == ("finished", 12, 12)
    assert s["final_validation"]["iteration"] == 12
    assert s["best_validation"]["iteration"] in (4, 8, 12)
    assert s["best_by"] == {"metric": "mse", "mode": "min", "inferred": True}
    assert s["best_validation"]["mse"] == min(
        r["mse"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "validation")
    assert set(s["last_loss"]) == {"weights", "decays"}
    assert s["overrides"] == ["engine.validate_every=4", "engine.iterations=12"]
    # every learned hyperparameter of a small problem, by name
    decays = s["learned"]["decays"]["log_decay"]
    assert len(decays) == 5 and len(s["learned"]["weights"]["w"]) == 5
    assert (out / "summary.md").read_text().count("decays.log_decay") == 1
    assert "done: 12 iterations" in stdout and "decays.log_decay = [" in stdout
    assert "final validation (iteration 12): mse=" in stdout

    status, shown, _ = run_cli(["show", out], capsys)
    assert status == 0 and shown == stdout
    status, shown, _ = run_cli(["show", out, "--json"], capsys)
    assert status == 0 and json.loads(shown) == s

    run = mlodsl.load_run(out)
    assert set(run) == {"weights", "decays"} and run.summary == s
    assert run.checkpoint.name == "ckpt-00000012.pt"
    assert torch.allclose(run["decays"].log_decay, torch.tensor(decays))
    assert torch.allclose(run["weights"].w, torch.tensor(s["learned"]["weights"]["w"]))


def test_early_stopped_run_names_where_it_stopped_and_the_best(tmp_path, capsys):
    out = tmp_path / "run"
    # mse falls at every validation, so "max" never improves after the first one
    status, stdout, stderr = run_cli(
        ["run", RIDGE, "--out", out, "--quiet", "--set", "engine.validate_every=2",
         "--set", 'engine.early_stop=dict(metric="mse", mode="max", patience=2)'], capsys)
    assert status == 0, stderr
    s = _summary(out)
    assert (s["status"], s["stopped_at"], s["best_iteration"]) == ("early_stopped", 6, 2)
    assert s["best_by"] == {"metric": "mse", "mode": "max", "inferred": False}
    assert stdout.startswith("early-stopped at iteration 6, best at 2")


def test_diverged_run_writes_its_summary(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, stderr = run_cli(["run", RIDGE, "--out", out, "--quiet", "--iterations", 60,
                                      "--set", "weights.optimizer.lr=50.0"], capsys)
    assert status == 1
    s = _summary(out)
    assert s["status"] == "diverged" and 1 <= s["stopped_at"] < 60
    assert "NaN or infinite" in s["message"]
    assert f"diverged at iteration {s['stopped_at']}" in stderr
    assert "Traceback" not in stderr
    status, shown, _ = run_cli(["show", out], capsys)
    assert shown.startswith(f"diverged at iteration {s['stopped_at']}")


def _interrupt(model):
    raise KeyboardInterrupt  # Ctrl-C during a validation


def _broken(model):
    raise ValueError("the metric's data is missing")


@pytest.mark.parametrize("validate, status, message", [
    (_interrupt, "interrupted", "Ctrl-C"),
    (_broken, "failed", "the metric's data is missing"),
])
def test_interrupted_and_failed_runs_write_their_summary(tmp_path, validate, status, message):
    plan = mlodsl.compile(RIDGE, overrides=["engine.validate=check(weights)",
                                            "engine.validate_every=3"],
                          namespace={"check": validate})
    with pytest.raises((KeyboardInterrupt, mlodsl.MLOError)):
        plan.run(run_dir=str(tmp_path), console=False)
    s = _summary(tmp_path)
    assert s["status"] == status and s["stopped_at"] == 3 and message in s["message"]
    assert plan.summary["status"] == status


def test_show_and_load_run_without_a_run_folder(tmp_path, capsys):
    status, _, stderr = run_cli(["show", tmp_path], capsys)
    assert status == 2 and "has no summary.json" in stderr
    with pytest.raises(mlodsl.MLOError, match="no readable summary"):
        mlodsl.load_run(tmp_path)


def test_load_run_takes_the_best_checkpoint_when_the_run_kept_one(tmp_path):
    out = tmp_path / "run"
    plan = mlodsl.compile(RIDGE)
    plan.run(iterations=4, run_dir=str(out), checkpoint_dir=str(out / "checkpoints"),
             console=False)
    plan.run(iterations=8)  # continues the run: a checkpoint at 4 and one at 8
    s = _summary(out)
    assert (s["status"], s["iterations"]) == ("finished", 8)
    assert s["last_checkpoint"].endswith("ckpt-00000008.pt") and "best_checkpoint" not in s
    early = out / "checkpoints" / "ckpt-00000004.pt"
    (out / "summary.json").write_text(json.dumps({**s, "best_checkpoint": str(early)}))
    best, last = mlodsl.load_run(out), mlodsl.load_run(out, which="last")
    assert best.checkpoint == early and last.checkpoint.name == "ckpt-00000008.pt"
    assert not torch.equal(best["weights"].w, last["weights"].w)
    assert torch.allclose(last["weights"].w, torch.tensor(s["learned"]["weights"]["w"]))
    with pytest.raises(mlodsl.MLOError, match="use 'best' or 'last'"):
        mlodsl.load_run(out, which="first")
