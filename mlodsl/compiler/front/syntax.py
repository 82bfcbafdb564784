"""Turning Lark's parse errors into readable diagnostics (private to the front end).

Lark reports the terminal names it expected (``NAME``, ``LPAR``, ``_NL``...). Users want
"expected ')' or ',', got end of line", with a caret on the offending token and, where we
can guess, a hint (an unclosed bracket, a keyword used as a name).
"""
from __future__ import annotations

import re

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from mlodsl.compiler.front.lexing import token_span
from mlodsl.diagnostics import Diagnostic, Span

__all__ = ["syntax_diagnostic"]

KEYWORDS = ("from", "import", "as", "let", "problem", "depends", "via", "engine", "every",
            "True", "False", "None")

# How each terminal reads in "expected ..." (in this order).
_DISPLAY = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "EQUAL": "'='", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "DOT": "'.'",
    "LANGLE": "'<'", "RANGLE": "'>'",
    **{kw.upper(): f"'{kw}'" for kw in KEYWORDS},
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'", "POW": "'**'",
    "_NL": "a newline", "_SEMI": "';'", "$END": "end of file",
}
_EXPRESSION_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS"}
_EXPRESSION_ALL = _EXPRESSION_START | {"PLUS", "TRUE", "FALSE", "NONE"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "POW"}
_POSTFIX = {"LPAR", "LSQB", "DOT"}
_BRACKET_NAMES = {"LPAR": "(", "LSQB": "[", "LANGLE": "<"}


def _describe_expected(expected: set[str]) -> str:
    expected = set(expected)
    parts: list[str] = []
    if _EXPRESSION_START <= expected:
        parts.append("an expression")
        expected -= _EXPRESSION_ALL
    if _OPERATORS <= expected:
        parts.append("an operator")
        expected -= _OPERATORS | _POSTFIX
    if "_NL" in expected:
        # The post-lexer ends every file with a newline, so "end of file" is never needed.
        expected.discard("$END")
    if {"_NL", "_SEMI"} <= expected:
        expected -= {"_NL", "_SEMI"}
        expected.add("_NL")
    order = list(_DISPLAY)
    names = sorted(expected, key=lambda t: order.index(t) if t in order else len(order))
    parts.extend(_DISPLAY.get(t, t.lower()) for t in names)
    parts = list(dict.fromkeys(parts))
    if not parts:
        return "something else"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _describe_token(tok: Token) -> str:
    kind = tok.type
    if kind == "NAME":
        return f"name '{tok.value}'"
    if kind in ("INT", "FLOAT"):
        return f"number {tok.value}"
    if kind == "STRING":
        text = tok.value if len(tok.value) <= 20 else tok.value[:17] + "..."
        return f"string {text}"
    if kind == "_NL":
        return "end of line"
    if kind == "$END":
        return "end of file"
    if tok.value.lower() in KEYWORDS or tok.value in KEYWORDS:
        return f"keyword '{tok.value}'"
    return f"'{tok.value}'"


def _printable(ch: str) -> str:
    if ch.isprintable() and not ch.isspace():
        return f"'{ch}'"
    return repr(ch)


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_LAMBDA = re.compile(rf"\blambda\s*(?:{_NAME}\s*(?:,\s*{_NAME}\s*)*)?$")  # and its parameters
_LAMBDA_HINT = "define the function in a Python module and import it (from parts import my_fn)"


def _lambda_before(text: str, pos: int) -> int | None:
    """The offset of a ``lambda`` (with its parameters) that ends just before ``pos``."""
    if not isinstance(pos, int) or pos < 0:
        return None
    m = _LAMBDA.search(text[max(0, pos - 200):pos])
    return None if m is None else max(0, pos - 200) + m.start()


def _lambda_diagnostic(file: str, text: str, pos: int) -> Diagnostic | None:
    start = _lambda_before(text, pos)
    if start is None:
        return None
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return Diagnostic(file, Span(line, column, line, column + len("lambda")), "error",
                      "a lambda is not part of .mlo expressions", _LAMBDA_HINT)


def syntax_diagnostic(err: UnexpectedInput, file: str, text: str,
                      open_brackets: list[Token]) -> Diagnostic:
    """One diagnostic for a Lark parse error, located at the offending token or character."""
    hint = None
    pos = err.pos_in_stream if isinstance(err, UnexpectedCharacters) else \
        getattr(getattr(err, "token", None), "start_pos", None)
    found = _lambda_diagnostic(file, text, pos)
    if found is not None:
        return found
    if isinstance(err, UnexpectedCharacters):
        line, col = err.line, err.column
        ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else ""
        span = Span(line, col, line, col + 1)
        if ch in "\"'":
            message = "unterminated string"
            hint = "strings end on the line they start, with the same quote"
        elif ch == "\\":
            message = "unexpected character '\\\\'"
            hint = "a line cannot be continued with '\\'; wrap the expression in parentheses"
        elif ch == "=" and text[err.pos_in_stream:err.pos_in_stream + 2] == "==":
            message = "unexpected '=='"
            hint = "comparisons are not part of .mlo expressions"
        else:
            message = f"unexpected character {_printable(ch)}"
            if ch == ":":
                hint = "slices and dicts are not part of .mlo expressions"
            elif ch and not ch.isascii():
                hint = "names and operators are ASCII; non-ASCII text belongs in strings"
        return Diagnostic(file, span, "error", message, hint)

    assert isinstance(err, UnexpectedToken)
    tok = err.token
    expected = set(getattr(err, "accepts", None) or err.expected)
    if tok.type == "$END" or getattr(tok, "line", None) is None:
        lines = text.splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
    elif tok.type == "_NL":
        # Point just past the end of the line rather than at the newline character.
        span = Span(tok.line, tok.column, tok.line, tok.column + 1)
    else:
        span = token_span(tok)
    message = f"expected {_describe_expected(expected)}, got {_describe_token(tok)}"
    end = getattr(tok, "end_pos", None)
    if tok.type == "EQUAL" and isinstance(end, int) and text[end:end + 1] == "=":
        return Diagnostic(file, Span(span.line, span.column, span.line, span.column + 2),
                          "error", "unexpected '=='",
                          "comparisons are not part of .mlo expressions")
    if open_brackets and (tok.type in ("$END", "RBRACE", "PROBLEM", "ENGINE", "LET",
                                         "FROM", "IMPORT", "_SEMI")
                            or span.line > open_brackets[-1].line):
        b = open_brackets[-1]
        hint = f"the '{_BRACKET_NAMES[b.type]}' at line {b.line}, column {b.column} is not closed"
    elif tok.type.upper() in {k.upper() for k in KEYWORDS} and "NAME" in expected:
        hint = f"'{tok.value}' is a keyword and cannot be used as a name"
    elif tok.type == "EQUAL" and "EQUAL" not in expected:
        hint = "'=' only assigns a field or a keyword argument"
    return Diagnostic(file, span, "error", message, hint)
