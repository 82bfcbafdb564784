"""Smaller points of issue 15: `mlodsl plot` draws a one-point series as a marker, `mlodsl
graph` writes to the current folder (or --out), `--variant all` names each variant."""
from __future__ import annotations

import json

from tests.support.cli import RIDGE, run_cli


def test_plot_draws_a_one_point_series_as_a_marker(tmp_path, capsys):
    records = [{"kind": "train", "iteration": 1, "problem": "p", "step": 1, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    status, _, err = run_cli(["plot", tmp_path, "-o", tmp_path / "c.svg"], capsys)
    assert status == 0, err
    assert (tmp_path / "c.svg").is_file()
    from mlodsl.cli.plot_cmd import curves, figure, load_run
    fig = figure(*curves(load_run(tmp_path)))
    (line,) = fig.axes[0].lines
    assert line.get_marker() not in (None, "None", "")
    records.append({**records[0], "iteration": 2, "step": 2})  # two points: a line again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (line,) = figure(*curves(load_run(tmp_path))).axes[0].lines
    assert line.get_marker() in (None, "None", "")


def test_graph_writes_to_the_current_folder_or_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run_cli(["graph", RIDGE], capsys)
    assert status == 0 and out == "wrote ridge.svg\n"
    assert (tmp_path / "ridge.svg").is_file() and not RIDGE.with_suffix(".svg").exists()
    status, _, _ = run_cli(["graph", RIDGE, "--out", tmp_path / "g.dot"], capsys)
    assert status == 0 and "decays" in (tmp_path / "g.dot").read_text()


def test_variant_all_names_the_variant_before_its_validation_log(capsys):
    from examples.hpo import hpo_python

    assert hpo_python.main(["--variant", "all", "--iterations", "1", "--valid-step", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    heads = [i for i, line in enumerate(err) if line.startswith("== variant ")]
    assert [err[i] for i in heads] == ["== variant baseline ==", "== variant seed ==",
                                       "== variant heldout =="]
    for i in heads:
        assert "[validation]" in err[i + 1]
