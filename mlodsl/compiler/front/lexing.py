"""The Lark parser for ``mlo.lark`` and its post-lexer (private to the front end).

The post-lexer implements the lexical rules that a context-free grammar cannot say: a
newline inside ``(...)`` or ``[...]`` is not a statement end, runs of newlines collapse to
one, comments are set aside for the formatter, and the file always ends with a newline so
the last statement is terminated. It also refuses absurdly deep bracket nesting up front.
"""
from __future__ import annotations

import threading
from pathlib import Path

from lark import Lark, Token
from lark.lark import PostLex

from mlodsl.diagnostics import Span

__all__ = ["MAX_DEPTH", "TooDeep", "get_parser", "PARSE_LOCK", "token_span"]

#: Deepest nesting accepted, both of brackets and of expression nodes. Real programs stay
#: far below it; it keeps every recursive walk over the IR well inside Python's stack.
MAX_DEPTH = 100

#: The Lark parser carries per-parse state (the post-lexer's comments), so parses are
#: serialized. Parsing is fast; this costs nothing in practice.
PARSE_LOCK = threading.Lock()

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB", "LANGLE": "RANGLE"}  # a header may span lines
_CLOSE = {"RPAR", "RSQB", "RANGLE"}


class TooDeep(Exception):
    """Raised while parsing when brackets or expressions nest more than MAX_DEPTH deep."""

    def __init__(self, span: Span):
        super().__init__("expression nested too deeply")
        self.span = span


def token_span(tok: Token) -> Span:
    """The span of a Lark token."""
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


class MloPostLex(PostLex):
    """Newline handling, comment collection and a bracket-depth guard (see module docstring).

    The state of the last parse (``comments``, ``open_brackets``) stays readable after the
    parse ends or fails: the error reporter uses ``open_brackets`` for its hints.
    """

    always_accept = ("_NL", "COMMENT")

    def __init__(self):
        self.comments: list[Token] = []
        self.open_brackets: list[Token] = []

    def process(self, stream):
        """Filter the token stream (see class docstring)."""
        self.comments = comments = []
        self.open_brackets = opened = []
        last = None
        for tok in stream:
            kind = tok.type
            if kind == "COMMENT":
                comments.append(tok)
                continue
            if kind == "_NL":
                # Inside brackets a newline is whitespace; at statement level, one is enough.
                if opened or (last is not None and last.type == "_NL"):
                    continue
            elif kind in _OPEN:
                opened.append(tok)
                if len(opened) > MAX_DEPTH:
                    raise TooDeep(token_span(tok))
            elif kind in _CLOSE and opened:
                opened.pop()
            last = tok
            yield tok
        if last is None or last.type != "_NL":
            if last is None:
                line, col = 1, 1
            else:
                line, col = last.end_line or last.line, last.end_column or last.column
            yield Token("_NL", "\n", 0, line, col, line, col + 1, 0)


_PARSER: Lark | None = None
_POSTLEX: MloPostLex | None = None


def grammar_path() -> Path:
    """Where ``mlo.lark`` lives."""
    return Path(__file__).resolve().parents[2] / "grammar" / "mlo.lark"


def get_parser(transformer) -> tuple[Lark, MloPostLex]:
    """The LALR parser (built once per process, its tables cached on disk by Lark)."""
    global _PARSER, _POSTLEX
    if _PARSER is None:
        postlex = MloPostLex()
        text = grammar_path().read_text(encoding="utf-8")
        kwargs = dict(parser="lalr", lexer="contextual", postlex=postlex,
                      transformer=transformer, maybe_placeholders=False, start=["start", "expression"])
        try:
            # Lark's cache saves ~0.1 s per `mlodsl check`: it stores the analysed grammar in
            # the temp directory, keyed by a hash of the grammar and options.
            parser = Lark(text, cache=True, **kwargs)
        except Exception:  # an unwritable or corrupt cache must not break parsing
            parser = Lark(text, **kwargs)
        _PARSER, _POSTLEX = parser, postlex
    return _PARSER, _POSTLEX
