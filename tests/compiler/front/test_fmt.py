"""The formatter's layout decisions (the corpus tests cover round trip and idempotence)."""
from __future__ import annotations

from mlodsl.compiler.front.fmt import format_expr, format_program
from mlodsl.compiler.front.parse import parse, parse_expression


def test_minimal_parentheses():
    for text in ["-x ** 2", "(-x) ** 2", "a - (b - c)", "(a - b) - c", "(a + b) * c",
                 "a ** b ** c", "(a ** b) ** c", "2 ** -1", "(a + b).c", "(a + b)(x)",
                 "-(a + b)", "f(x)[0].y", "(1,)", "()", "x[1, 2]", "x[(1,)]", "a @ b / c"]:
        formatted = format_expr(parse_expression(text))
        assert parse_expression(formatted) == parse_expression(text), text
    assert format_expr(parse_expression("(a - b) - c")) == "a - b - c"
    assert format_expr(parse_expression("((x))")) == "x"


def test_strings_are_double_quoted_and_escaped():
    assert format_expr(parse_expression("'it\\'s'")) == '"it\'s"'
    assert format_expr(parse_expression("'a\"b\\n'")) == '"a\\"b\\n"'


def test_comments_keep_their_places():
    src = ("# head\n\nlet a = 1  # end of a\n# above p\nproblem p {  # on header\n"
           "  # above module\n  module = f(  # inside\n    1)\n  # before brace\n}  # after\n"
           "# tail\n")
    out = format_program(src)
    assert out == ("# head\n\nlet a = 1  # end of a\n\n# above p\nproblem p {  # on header\n"
                   "    # above module\n    # inside\n    module = f(1)\n"
                   "    # before brace\n}  # after\n\n# tail\n")
    assert parse(out) == parse(src)


def test_fields_aligned_and_blank_line_kept():
    out = format_program("engine {\n  iterations = 1\n\n\n  seed = 2\n  validate_every=3\n}\n")
    assert out == ("engine {\n    iterations     = 1\n\n    seed           = 2\n"
                   "    validate_every = 3\n}\n")


def test_edges_and_imports():
    src = "import a.b as c\nfrom x import y as z, w\nproblem p depends q every 2 via cg(iterations=3), r {}"
    assert format_program(src) == ("import a.b as c\nfrom x import y as z, w\n\n"
                                   "problem p depends q every 2 via cg(iterations=3), r {\n}\n")


def test_empty_program():
    assert format_program("") == ""
    assert format_program("\n\n# only a comment\n") == "# only a comment\n"
