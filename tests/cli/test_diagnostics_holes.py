"""Diagnostics without holes (issue 15): each failure gets FILE:LINE:COL and the language's
words, JSON whenever --json is asked for, and never a traceback."""
from __future__ import annotations

import json

import pytest

from tests.support.cli import RIDGE, run_cli

PARTS = (RIDGE.parent / "ridge_parts.py").read_text()
SRC = RIDGE.read_text()
MES = '"mes"'  # a typo of the metric mse


def _program(tmp_path, text, name="prog.mlo"):
    (tmp_path / "ridge_parts.py").write_text(PARTS)
    path = tmp_path / name
    path.write_text(text)
    return path


def _position(text, needle, occurrence=0):
    """``LINE:COL`` of the ``occurrence``-th ``needle`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    return f"{line}:{start - text.rfind(chr(10), 0, start)}"


def test_early_stop_metric_typo_is_found_by_check(tmp_path, capsys):
    text = SRC.replace("    seed       = 0",
                       '    seed       = 0\n    early_stop = dict(metric="mes")')
    path = _program(tmp_path, text)
    status, _, err = run_cli(["check", path], capsys)
    assert status == 2
    assert f"{path}:{_position(text, MES)}: error: 'early_stop' watches 'mes', but " \
           "'validate' gives only 'mse'" in err
    assert "hint: did you mean 'mse'?" in err


def test_early_stop_metric_typo_behind_a_function_at_the_first_validation(tmp_path, capsys):
    text = SRC.replace("from ridge_parts import Linear",
                       "from ridge_parts import Linear, val_mse")
    text = text.replace(text[text.index("    validate   ="):text.index("    seed")],
                        '    validate   = val_mse(weights)\n    validate_every = 2\n'
                        '    early_stop = dict(metric="mes")\n')
    path = _program(tmp_path, text)
    (tmp_path / "ridge_parts.py").write_text(
        PARTS + "\n\ndef val_mse(model):\n    x, y = ridge_data('val')[0]\n"
                "    return {'mse': ((model(x) - y) ** 2).mean()}\n")
    status, _, err = run_cli(["check", path], capsys)
    assert status == 0
    status, _, err = run_cli(["run", path, "--quiet", "--out", tmp_path / "run"], capsys)
    assert status == 1
    assert f"{path}:{_position(text, MES)}: error: 'early_stop' watches 'mes', but " \
           "'validate' gives only 'mse'" in err
    assert "hint: did you mean 'mse'?" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped_at"] == 2


def test_a_loss_with_reduction_none_is_reported_at_the_loss(tmp_path, capsys):
    text = SRC.replace("F.mse_loss(weights(x), y) + penalty",
                       'F.mse_loss(weights(x), y, reduction="none") + penalty')
    path = _program(tmp_path, text)
    status, _, err = run_cli(["run", path, "--quiet", "--out", tmp_path / "run"], capsys)
    assert status == 1
    assert f"{path}:{_position(text, 'F.mse_loss')}: error: the loss of 'weights' must be one " \
           "number, but it gives a tensor of shape [200]" in err
    assert 'reduction="none" keeps one loss per example' in err
    assert "training_step" not in err and "Traceback" not in err


def test_a_lambda_gets_a_hint(tmp_path, capsys):
    text = SRC.replace("module     = Linear()", "module     = Linear(lambda w: w)")
    path = _program(tmp_path, text)
    status, _, err = run_cli(["check", path], capsys)
    assert status == 2
    assert f"{path}:{_position(text, 'lambda')}: error: a lambda is not part of .mlo " \
           "expressions" in err
    assert "hint: define the function in a Python module and import it" in err


def test_an_import_typo_is_reported_at_the_import(tmp_path, capsys):
    text = SRC.replace("import Linear, Decays", "import Linears, Decays")
    path = _program(tmp_path, text)
    status, _, err = run_cli(["compile", path], capsys)
    assert status == 2
    lines = err.splitlines()
    assert lines[0] == f"{path}:{_position(text, 'Linears')}: error: cannot import 'Linears' " \
                       "from 'ridge_parts'"
    assert "  hint: did you mean 'Linear'?" in lines
    assert f"{path}:{_position(text, 'Linear()')}: error: unknown name 'Linear'" in lines
    assert "did you mean 'Linears'?" not in err
    # check imports nothing: it names both possible fixes
    status, _, err = run_cli(["check", path], capsys)
    assert "(or, if the module defines 'Linear', fix the import at line 2)" in err


@pytest.mark.parametrize("argv", [
    ["compile", "{bad}", "--json"],
    ["compile", "{missing}", "--json"],
    ["compile", "{good}", "--json", "--set", "weights.evry=3"],
    ["show", "{dir}", "--json"],
    ["compile", "--json"],  # a usage error
])
def test_every_json_command_prints_json_for_every_error(tmp_path, capsys, argv):
    paths = {"bad": _program(tmp_path, SRC.replace("weights(x), y)", "weigths(x), y)", 1)),
             "missing": tmp_path / "nope.mlo", "good": RIDGE, "dir": tmp_path}
    try:
        status, out, _ = run_cli([a.format(**paths) for a in argv], capsys)
    except SystemExit as usage:  # argparse's way out, also for JSON
        status, out = usage.code, capsys.readouterr().out
    data = json.loads(out)
    assert status == 2 and data["ok"] is False and data["exit_status"] == 2
    assert any(d["severity"] == "error" for d in data["diagnostics"])
    if argv[1] == "{bad}":
        (d,) = [d for d in data["diagnostics"] if d["severity"] == "error"]
        assert (d["line"], d["column"], d["message"]) == (9, 29, "unknown name 'weigths'")


def test_check_json_and_a_run_error_with_warnings_keep_lines_apart(tmp_path, capsys):
    path = _program(tmp_path, SRC.replace("weights(x), y)", "weigths(x), y)", 1))
    status, out, _ = run_cli(["check", path, "--format", "json"], capsys)
    assert status == 2 and "unknown name 'weigths'" in [d["message"] for d in json.loads(out)]
    # a program with a compile warning (batch_size on batches) that fails while running
    text = SRC.replace("    data       = ridge_data(\"train\")",
                       "    data       = ridge_data(\"train\")\n    batch_size = 8")
    text = text.replace("F.mse_loss(weights(x), y) + penalty",
                        'F.mse_loss(weights(x), y, reduction="none") + penalty')
    path = _program(tmp_path, text, "warned.mlo")
    status, _, err = run_cli(["run", path, "--quiet", "--out", tmp_path / "run"], capsys)
    assert status == 1
    for line in err.splitlines():  # every diagnostic starts a line of its own
        assert line.count(": warning: ") + line.count(": error: ") <= 1, line
        if line.startswith("  hint: "):
            assert "warning:" not in line and "error:" not in line, line
