"""Resolution and the interpreter: imports, user-code failures, namespace, no dunders."""
from __future__ import annotations

import os

import pytest

import mlodsl
from mlodsl.compiler.back.interpret import Interpreter, Scope
from mlodsl.compiler.front.parse import parse_expression
from mlodsl.compiler.back.resolve import search_path
from mlodsl.diagnostics import MLOError

from tests.support.paths import HPO, IMPORTS, ROOT, run_cli


def _only_error(info):
    errors = [d for d in info.value.diagnostics if d.severity == "error"]
    assert len(errors) == 1, errors
    return errors[0]


def test_import_raising_in_user_code_is_one_diagnostic(capsys):
    path = IMPORTS / "import_error.mlo"
    status, out, err = run_cli(["compile", path], capsys)
    assert status == 2 and "Traceback" not in err
    assert f"{path}:2:6: error: importing 'bk_broken' failed: ValueError: bk_broken: the " \
           "configuration file is missing" in err
    assert "bk_broken.py:3" in err  # the user's line that raised
    assert err.count("error:") == 1


def test_missing_data_file_is_reported_at_the_call(capsys, tmp_path):
    path = IMPORTS / "missing_file.mlo"
    status, out, err = run_cli(["run", path, "--out", tmp_path / "run"], capsys)
    assert status == 2 and "Traceback" not in err
    assert f"{path}:7:12: error: the data of 'p': load_table(...) failed: FileNotFoundError" in err
    assert 'data = load_table("no/such/file.csv")' in err and "^~~~" in err


def test_unknown_module_and_unknown_name(monkeypatch):
    monkeypatch.chdir(IMPORTS)  # a source string's imports are searched in the current directory
    src = ("from bk_partz import Tiny\nfrom bk_parts import Tinny\n"
           "problem p { module = Tiny(); optimizer = SGD(lr=1); data = [1]; loss(x) = p(x) }\n"
           "engine { iterations = 1 }\n")
    with pytest.raises(MLOError) as info:
        mlodsl.compile(src)
    d1, d2 = info.value.diagnostics
    assert (d1.span.line, d1.span.column) == (1, 6)
    assert "cannot import 'bk_partz': no module named 'bk_partz'" in d1.message
    assert d1.hint == "did you mean 'bk_parts'?"
    assert d2.span.line == 2 and "cannot import 'Tinny' from 'bk_parts'" in d2.message
    assert d2.hint == "did you mean 'Tiny'?"


def test_search_path_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = search_path(str(HPO))
    assert path[:3] == [str(HPO.parent), str(tmp_path), str(HPO.parent.parent)]
    assert str(ROOT) in path


def test_examples_import_from_anywhere_inside_the_repo(monkeypatch):
    monkeypatch.chdir(ROOT / "mlodsl" / "runtime")
    plan = mlodsl.compile(os.path.relpath(HPO))
    assert list(plan.problems) == ["classifier", "hpo"]


def test_namespace_binds_names_instead_of_imports():
    from tests.programs.imports.bk_parts import Tiny, toy
    src = ("problem p { module = Net(); optimizer = SGD(lr=1); data = d; batch_size = 4\n"
           "  loss(x, y) = mse(p(x), y) }\nengine { iterations = 1 }\n")
    import torch.nn.functional as F
    plan = mlodsl.compile(src, namespace={"Net": Tiny, "d": toy(8), "mse": F.mse_loss})
    assert isinstance(plan.problems["p"].module, Tiny)
    with pytest.raises(MLOError, match="unknown name 'Net'"):
        mlodsl.compile(src)


def test_source_or_path():
    with pytest.raises(MLOError, match="cannot read 'nope.mlo': no such file"):
        mlodsl.compile("nope.mlo")
    with pytest.raises(MLOError) as info:
        mlodsl.compile("engine { iterations = 0 }")  # source text, checked
    assert info.value.diagnostics[0].file == "<string>"


def test_interpreter_refuses_dunders_and_string_attributes():
    interp = Interpreter(Scope({"x": object(), "s": "text"}))
    with pytest.raises(MLOError, match="dunder attribute '__class__'"):
        interp.run(parse_expression("x.__class__"))
    with pytest.raises(MLOError, match="attribute access on a string"):
        interp.run(parse_expression("s.upper"))
    with pytest.raises(MLOError, match="dunder name"):
        interp.run(parse_expression("__import__"))
    assert interp.run(parse_expression("[1, 2][0] + 2 ** 3 * -1")) == -7


def test_interpreter_reports_user_errors_at_the_failing_node():
    def boom(v):
        raise RuntimeError("no good")
    interp = Interpreter(Scope({"boom": boom, "n": 1}), what="the data of 'p'")
    with pytest.raises(MLOError) as info:
        interp.run(parse_expression("[n, boom(n + 1)]", "x.mlo"))
    d = info.value.diagnostics[0]
    assert (d.span.column, d.span.end_column) == (5, 16)
    assert d.message == "the data of 'p': boom(...) failed: RuntimeError: no good"


def test_two_programs_in_one_process_each_import_their_own_parts(tmp_path, monkeypatch):
    # Each folder has its own parts.py: the second compile must not reuse the first's module.
    monkeypatch.chdir(tmp_path)
    program = ("from parts import WIDTH\nimport torch.nn as nn\n\n"
               "problem p {\n    module = nn.Linear(WIDTH, 1)\n    optimizer = SGD(lr=0.1)\n"
               "    data = [(1.0, 2.0)]\n    loss(x, y) = (p.weight.sum() * x - y) ** 2\n}\n\n"
               "engine { iterations = 1 }\n")
    widths = {}
    for width in (3, 5):
        folder = tmp_path / f"run{width}"
        folder.mkdir()
        (folder / "parts.py").write_text(f"WIDTH = {width}\n")
        (folder / "prog.mlo").write_text(program)
        plan = mlodsl.compile(str(folder / "prog.mlo"))
        widths[width] = plan.problems["p"].module.in_features
    assert widths == {3: 3, 5: 5}
