"""Run folder (metrics.jsonl/csv), TensorBoard fallback, progress display, mlodsl plot/graph."""
import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from tests.support import mlp_hpo as P
from tests.support.paths import PROGRAMS
from mlodsl.cli import main as cli
from mlodsl.runtime.logging import MetricsLog, RunWriter, make_sinks
from mlodsl.runtime.progress import ProgressReporter, RichProgress, make_progress

GOOD = PROGRAMS / "good"


def _run_with_folder(tmp_path, iters=10, **kw):
    e = P.build(iters, engine_kwargs=dict(run_dir=str(tmp_path / "run"), **kw),
                lower_config=P.Config(log_step=2))
    e.history.console = False
    e.run()
    return e


def test_run_writer_writes_jsonl_and_csv(tmp_path):
    e = _run_with_folder(tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [r for r in e.history.records]
    assert [r["iteration"] for r in rows if r["kind"] == "validation"] == [5, 10]
    assert [r["step"] for r in rows if r.get("problem") == "lower"] == [2, 4, 6, 8, 10]
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"kind", "iteration", "loss", "acc"} <= set(table[0])


def test_resumed_run_folder_has_no_duplicate_records(tmp_path):
    d = str(tmp_path / "ck")
    _run_with_folder(tmp_path, 7, checkpoint_dir=d, checkpoint_every=5)
    # simulate a kill after iteration 7 with the last checkpoint at 5: resume, run to 10
    (Path(d) / "ckpt-00000007.pt").unlink()
    e = _run_with_folder(tmp_path, 10, checkpoint_dir=d, resume_from=d)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lower_steps = [r["step"] for r in rows if r.get("problem") == "lower"]
    assert lower_steps == [2, 4, 6, 8, 10]
    assert e.global_step == 10


def test_nan_and_odd_values_are_written_as_text(tmp_path):
    w = RunWriter(tmp_path)
    w({"kind": "train", "iteration": 1, "problem": "p", "step": 1, "loss": float("nan")})
    w({"kind": "validation", "iteration": 1, "new_key": object()})
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == "nan" and isinstance(rows[1]["new_key"], str)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "new_key" in header


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed here")
def test_tensorboard_missing_is_a_clear_message_not_a_crash(tmp_path):
    log = MetricsLog(console=False)
    sinks = make_sinks("tensorboard", str(tmp_path), log)
    assert len(sinks) == 1  # the run folder still
    assert "tensorboard package is not installed" in log.records[-1]["message"]


def test_progress_plain_lines_when_not_a_terminal(tmp_path):
    e = P.build(5)
    e.history.console = False
    e.run()
    stream = io.StringIO()
    reporter = make_progress(total=10, stream=stream)
    assert type(reporter) is ProgressReporter
    reporter.update(e, force=True)
    line = stream.getvalue().strip()
    assert line.startswith("iter 5/10 (50.0%)") and "it/s" in line and "ETA" in line
    assert "lower=" in line and "upper=" in line


def test_engine_progress_option_prints_lines(capsys):
    e = P.build(4, engine_kwargs=dict(progress=True))
    e.history.console = False
    e.run()
    assert "iter 4/4 (100.0%)" in capsys.readouterr().err


def test_rich_progress_bar_runs():
    e = P.build(3)
    e.history.console = False
    bar = RichProgress(total=3)
    with bar:
        e.run()
        bar.update(e, force=True)
    assert bar._progress.tasks[0].completed == 3


def test_plot_draws_losses_and_validation_metrics(tmp_path, capsys):
    _run_with_folder(tmp_path)
    out = tmp_path / "curves.png"
    assert cli(["plot", str(tmp_path / "run"), "-o", str(out)]) == 0
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
    assert cli(["plot", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli(["plot", str(tmp_path / "empty")]) == 1
    assert "no metrics" in capsys.readouterr().err


def test_graph_writes_dot_svg_and_png(tmp_path):
    dot = tmp_path / "g.dot"
    assert cli(["graph", str(GOOD / "diamond.mlo"), "-o", str(dot)]) == 0
    text = dot.read_text()
    assert '"left" -> "base" [label="sama(alpha=1.0)"]' in text
    assert '"right" -> "base" [label="unroll(checkpoint=True) every 2"]' in text
    assert '"mixer" -> "left" [label="darts()"]' in text
    assert "rank=same" in text and "// level 2" in text
    for suffix in (".svg", ".png"):
        out = tmp_path / f"g{suffix}"
        assert cli(["graph", str(GOOD / "hpo.mlo"), "-o", str(out)]) == 0
        assert out.stat().st_size > 1000
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_graph_reports_program_errors_and_bad_formats(tmp_path, capsys):
    bad = tmp_path / "bad.mlo"
    bad.write_text("problem a depends a {\n}\n")
    assert cli(["graph", str(bad), "-o", str(tmp_path / "x.dot")]) == 2
    assert "error" in capsys.readouterr().err
    assert cli(["graph", str(GOOD / "hpo.mlo"), "-o", str(tmp_path / "x.jpg")]) == 2
