"""``mlodsl check`` and ``mlodsl fmt`` through the CLI, in process and as subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlodsl.cli import main

from tests.support.corpus import BAD, GOOD, ROOT

HPO = ROOT / "tests/programs/good/hpo.mlo"


def run_cli(*args, capsys):
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_clean_program(capsys):
    status, out, err = run_cli("check", str(HPO), capsys=capsys)
    assert status == 0 and err == ""
    assert out == f"{HPO}: ok (2 problems, 2 levels)\n"


def test_check_error_program_text(capsys):
    path = ROOT / "tests/programs/bad/unknown_name.mlo"
    status, out, err = run_cli("check", str(path), capsys=capsys)
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}:15:29: error: unknown name 'iner'"
    assert lines[1] == "        module     = Decay(like=iner)"
    assert lines[2] == "                                ^~~~"
    assert lines[3] == "  hint: did you mean 'inner'?"


def test_check_warnings_exit_zero(capsys):
    path = ROOT / "tests/programs/bad/warning_lower_never_reads_upper.mlo"
    status, out, err = run_cli("check", str(path), capsys=capsys)
    assert status == 0
    assert "warning: hypergradient through 'inner' is zero" in err
    assert out.endswith("ok (2 problems, 2 levels, 1 warning)\n")


def test_check_json(capsys):
    path = ROOT / "tests/programs/bad/many_errors.mlo"
    status, out, _ = run_cli("check", "--format", "json", str(path), str(HPO), capsys=capsys)
    assert status == 2
    items = json.loads(out)
    assert [(i["line"], i["column"], i["severity"]) for i in items] == [
        (8, 5, "error"), (15, 29, "error"), (23, 18, "error")]
    assert set(items[0]) >= {"file", "line", "column", "end_line", "end_column", "severity",
                             "message", "hint"}
    assert items[0]["hint"] == "did you mean 'optimizer'?"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_check_unreadable_paths(kind, tmp_path, capsys):
    path = tmp_path / "nope.mlo" if kind == "missing" else tmp_path
    status, out, err = run_cli("check", str(path), capsys=capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "cannot read" in err


def test_check_huge_and_binary_files(tmp_path, capsys):
    big = tmp_path / "big.mlo"
    big.write_bytes(b"let x = 1\n" * 1_100_000)  # ~10 MB
    binary = tmp_path / "bin.mlo"
    binary.write_bytes(os.urandom(4096))
    status, _, err = run_cli("check", str(big), str(binary), capsys=capsys)
    assert status == 2
    assert "file is too large" in err and "Traceback" not in err


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_check_bad_corpus_status(path, capsys):
    status, _, err = run_cli("check", str(path), capsys=capsys)
    expected = path.with_suffix(".expected").read_text()
    assert status == (2 if ": error:" in expected else 0)
    assert "Traceback" not in err


def test_fmt_check_and_rewrite(tmp_path, capsys):
    messy = tmp_path / "messy.mlo"
    messy.write_text("from m import N, d  # parts\nproblem p{module=N()\noptimizer=SGD(lr=1)"
                     "\ndata=d();loss(x,y)=p(x)}\nengine{iterations=1}")
    status, out, _ = run_cli("fmt", "--check", str(messy), str(HPO), capsys=capsys)
    assert status == 1 and out == f"would reformat {messy}\n"
    status, out, _ = run_cli("fmt", str(messy), capsys=capsys)
    assert status == 0 and out == f"reformatted {messy}\n"
    assert messy.read_text() == (
        "from m import N, d  # parts\n\nproblem p {\n    module     = N()\n"
        "    optimizer  = SGD(lr=1)\n    data       = d()\n    loss(x, y) = p(x)\n}\n\n"
        "engine {\n    iterations = 1\n}\n")
    status, out, _ = run_cli("fmt", "--check", str(messy), capsys=capsys)
    assert status == 0 and out == ""


def test_fmt_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.mlo"
    bad.write_text("let x = (\n")
    status, _, err = run_cli("fmt", str(bad), capsys=capsys)
    assert status == 2 and "error: expected" in err
    assert bad.read_text() == "let x = (\n"


def _run(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, **kw)


def test_check_subprocess_never_imports_torch():
    probe = ("import sys, runpy; sys.argv = ['mlodsl', 'check', %r]\n"
             "try:\n    runpy.run_module('mlodsl', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n"
             "assert 'networkx' not in sys.modules, 'networkx was imported'\n"
             "sys.exit(code)\n") % str(HPO)
    proc = _run("-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert "ok (2 problems, 2 levels)" in proc.stdout


def test_cli_modules_do_not_import_torch():
    proc = _run("-c", "import mlodsl.cli.check_cmd, mlodsl.cli.fmt_cmd, "
                "mlodsl.compiler.front.check, mlodsl.compiler.front.fmt, sys; "
                "assert 'torch' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_exit_status():
    proc = _run("-m", "mlodsl", "check", str(ROOT / "tests/programs/bad/cycle_two.mlo"))
    assert proc.returncode == 2
    assert "depends cycle: inner -> outer -> inner" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_good_corpus_via_cli(capsys):
    status, out, err = run_cli("check", *map(str, GOOD), capsys=capsys)
    assert status == 0 and err == ""
    assert out.count(": ok (") == len(GOOD)
