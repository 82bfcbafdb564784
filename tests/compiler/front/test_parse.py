"""The parser: IR shapes, spans, syntax errors, and input that is not a program at all."""
from __future__ import annotations

import pytest

from mlodsl.compiler import ir
from mlodsl.compiler.front.parse import MAX_SOURCE_BYTES, parse, parse_expression
from mlodsl.diagnostics import MLOError, Span

from tests.support.corpus import ROOT


def errors_of(src) -> list[str]:
    with pytest.raises(MLOError) as info:
        parse(src, "t.mlo")
    return [f"{d.span.line}:{d.span.column}: {d.message}" for d in info.value.diagnostics]


def test_spec_program_ir():
    prog = parse((ROOT / "tests/programs/good/hpo.mlo").read_text(), "hpo.mlo")
    assert prog.file == "hpo.mlo"
    assert [p.name for p in prog.problems] == ["classifier", "hpo"]
    assert [(i.module, i.is_from) for i in prog.imports] == [
        ("examples.hpo.parts", True), ("torch.nn.functional", False)]
    assert prog.imports[1].bindings()[0][0] == "F"
    assert [let.name for let in prog.lets] == ["batch", "sizes"]
    hpo = prog.problem("hpo")
    assert hpo.edges == (ir.Edge("classifier", None, ir.Call(ir.Name("darts"))),)
    loss = hpo.field("loss")
    assert loss.params == ("x", "y")
    assert isinstance(loss.value, ir.BinOp) and loss.value.op == "+"
    assert hpo.field("nope") is None
    assert prog.engine.field("iterations").value == ir.Constant(5000)
    assert prog.problem("missing") is None
    assert prog.comments[0].text.startswith("# hpo.mlo")


def test_spans_point_at_the_source():
    src = "let x = 1\nproblem net depends a every 3 via darts(alpha=0.1) {\n  module = Net(x)\n}\n"
    prog = parse(src)
    net = prog.problem("net")
    assert net.name_span == Span(2, 9, 2, 12)
    assert net.edges[0].target_span == Span(2, 21, 2, 22)
    assert net.edges[0].every == ir.Constant(3) and net.edges[0].every_span == Span(2, 29, 2, 30)
    module = net.field("module")
    assert module.name_span == Span(3, 3, 3, 9)
    assert module.value.span == Span(3, 12, 3, 18)
    assert module.value.args[0].span == Span(3, 16, 3, 17)
    assert net.span.line == 2 and net.span.end_line == 4
    assert prog.lets[0].name_span == Span(1, 5, 1, 6)


def test_spans_do_not_take_part_in_equality():
    assert parse("let x = 1") == parse("\n\n   let   x=1  ;\n")


def test_imports_both_forms():
    prog = parse("from a.b import c, d as e\nimport f.g\nimport h.i as j\n")
    a, b, c = prog.imports
    assert [n.bound for n in a.names] == ["c", "e"]
    assert [name for name, _ in b.bindings()] == ["f"]
    assert [name for name, _ in c.bindings()] == ["j"]


@pytest.mark.parametrize("text, expected", [
    ("-x ** 2", ir.UnaryOp("-", ir.BinOp("**", ir.Name("x"), ir.Constant(2)))),
    ("a - b - c", ir.BinOp("-", ir.BinOp("-", ir.Name("a"), ir.Name("b")), ir.Name("c"))),
    ("a ** b ** c", ir.BinOp("**", ir.Name("a"), ir.BinOp("**", ir.Name("b"), ir.Name("c")))),
    ("a + b * c", ir.BinOp("+", ir.Name("a"), ir.BinOp("*", ir.Name("b"), ir.Name("c")))),
    ("a @ b", ir.BinOp("@", ir.Name("a"), ir.Name("b"))),
    ("f(1, k=2)", ir.Call(ir.Name("f"), (ir.Constant(1),), (ir.Keyword("k", ir.Constant(2)),))),
    ("m.fc.weight", ir.Attribute(ir.Attribute(ir.Name("m"), "fc"), "weight")),
    ("x[0]", ir.Index(ir.Name("x"), ir.Constant(0))),
    ("x[0, 1]", ir.Index(ir.Name("x"), ir.TupleExpr((ir.Constant(0), ir.Constant(1))))),
    ("(1,)", ir.TupleExpr((ir.Constant(1),))),
    ("()", ir.TupleExpr(())),
    ("[1, 2,]", ir.ListExpr((ir.Constant(1), ir.Constant(2)))),
    ("(a)", ir.Name("a")),
    ("'a\\'b'", ir.Constant("a'b")),
    ('"\\n\\x41"', ir.Constant("\nA")),
    ("1e-5", ir.Constant(1e-5)),
    ("1_000", ir.Constant(1000)),
    ("True", ir.Constant(True)),
    ("None", ir.Constant(None)),
    ("f(\n  1,\n  2\n)", ir.Call(ir.Name("f"), (ir.Constant(1), ir.Constant(2)))),
])
def test_parse_expression(text, expected):
    assert parse_expression(text) == expected


def test_parse_expression_rejects_statements():
    with pytest.raises(MLOError) as info:
        parse_expression("let x = 1")
    assert info.value.diagnostics[0].file == "<override>"
    with pytest.raises(MLOError):
        parse_expression("1 2")


def test_constant_keeps_its_spelling():
    assert parse_expression("5e-4").raw == "5e-4"


@pytest.mark.parametrize("src, expected", [
    ("let x = (1", "1:11: expected ')' or ',', got end of line"),
    ("let every = 1", "1:5: expected a name, got keyword 'every'"),
    ("let x = 'abc", "1:9: unterminated string"),
    ("let x = 1 $", "1:11: unexpected character '$'"),
    ("problem a { module = }", "1:22: expected an expression, got '}'"),
    ("let x = f(a=1, 2)", "1:16: positional argument follows keyword argument"),
    ("problem a", "1:10: expected '{', '<' or 'depends', got end of line"),
    ("let x = 1 == 1", "1:11: unexpected '=='"),
])
def test_syntax_errors(src, expected):
    assert errors_of(src)[0] == expected


def test_several_syntax_errors_in_one_run():
    src = "let a = (1\nlet b = 2\nproblem p {\n  module = ]\n}\nlet c = 1 2\n"
    assert [e.split(":")[0] for e in errors_of(src)] == ["2", "4", "6"]


def test_unclosed_bracket_hint():
    with pytest.raises(MLOError) as info:
        parse("let a = f(1,\nproblem p {}\n")
    assert "is not closed" in info.value.diagnostics[0].hint


def test_error_carries_sources_for_rendering():
    with pytest.raises(MLOError) as info:
        parse("let x = $", "f.mlo")
    text = info.value.render(info.value.sources)
    assert text.splitlines() == ["f.mlo:1:9: error: unexpected character '$'",
                                 "    let x = $", "            ^"]


@pytest.mark.parametrize("src", [
    "let x = " + "(" * 10_000 + "1" + ")" * 10_000,
    "let x = " + "[" * 10_000 + "1" + "]" * 10_000,
    "let x = " + "(" * 10_000,
    "let x = " + "-" * 10_000 + "1",
    "let x = " + " + ".join(["1"] * 5_000),
    "let x = 1" + " ** 1" * 5_000,
    "let x = f" + "()" * 5_000,
    "let x = a" + ".b" * 5_000,
])
def test_deep_nesting_is_a_diagnostic(src):
    msgs = errors_of(src)
    assert any("nested too deeply" in m for m in msgs)


def test_moderate_nesting_is_fine():
    parse("let x = " + "(" * 90 + "1" + ")" * 90)
    parse("let x = " + "[" * 90 + "1" + "]" * 90)


@pytest.mark.parametrize("data", [
    b"\xff\xfe\x00garbage", b"let x = \"caf\xe9\"", bytes(range(256)), b"\x00" * 100,
    b"", b"   \n\n  ", "\ufefflet x = 1".encode(), b"let x = 1\r\nlet y = 2\r\n",
])
def test_odd_bytes_never_escape_as_exceptions(data):
    try:
        parse(data, "odd.mlo")
    except MLOError as err:
        assert err.diagnostics and err.diagnostics[0].file == "odd.mlo"


def test_invalid_utf8_position():
    assert errors_of(b"let x = 1\nlet y = \"caf\xe9\"\n") == ["2:13: invalid UTF-8 (byte 0xe9)"]


def test_huge_input_is_refused_quickly():
    big = "let x = 1\n" * (MAX_SOURCE_BYTES // 10 + 100)
    assert "file is too large" in errors_of(big)[0]


def test_huge_integer_literal():
    assert errors_of("let x = " + "9" * 5000) == ["1:9: integer literal is too long"]


def test_bom_and_crlf():
    assert parse("\ufefflet x = 1\r\nlet y = 2\r\n") == parse("let x = 1\nlet y = 2\n")


def test_very_long_lines_are_clipped_in_rendering():
    with pytest.raises(MLOError) as info:
        parse("let x = 1 " + " " * 300 + "$", "w.mlo")
    lines = info.value.render(info.value.sources).splitlines()
    assert len(lines[1]) < 140 and lines[1].startswith("    ...")
    assert lines[2].index("^") == lines[1].index("$")
