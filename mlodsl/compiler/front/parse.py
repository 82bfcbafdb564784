"""Parsing ``.mlo`` text into the IR (:mod:`mlodsl.compiler.ir`).

``parse`` never fails with anything but :class:`~mlodsl.diagnostics.MLOError`, whatever it is
given: invalid UTF-8, binary data, huge or deeply nested input. A syntax error is reported
at the offending token with an "expected ..." message; after one, parsing resumes at the
next line that starts a top-level statement, so one run reports the syntax errors of
several statements.

Example::

    >>> prog = parse("problem p { module = Net() }\\nengine { iterations = 10 }\\n", "x.mlo")
    >>> prog.problem("p").field("module").value
    Call(func=Name(name='Net'), args=(), kwargs=())
"""
from __future__ import annotations

import re

from lark.exceptions import UnexpectedInput

from mlodsl.compiler import ir
from mlodsl.compiler.front.build import BadLiteral, IRBuilder
from mlodsl.compiler.front.lexing import MAX_DEPTH, PARSE_LOCK, TooDeep, get_parser
from mlodsl.compiler.front.syntax import syntax_diagnostic
from mlodsl.diagnostics import Diagnostic, MLOError, Span

__all__ = ["parse", "parse_expression", "decode_source", "MAX_SOURCE_BYTES"]

#: Larger files are refused with one diagnostic: a .mlo program is a page of text, and
#: parsing megabytes of it only delays the inevitable error.
MAX_SOURCE_BYTES = 2 * 1024 * 1024

#: After this many syntax errors in one file, stop looking for more.
MAX_SYNTAX_ERRORS = 20

_BUILDER = IRBuilder()
_RESUME = re.compile(r"^[ \t]*(problem|engine|let|import|from)(?![A-Za-z0-9_])", re.M)


def _error(file: str, span: Span | None, message: str, hint: str | None = None,
           text: str | None = None) -> MLOError:
    return MLOError(Diagnostic(file, span, "error", message, hint),
                    sources={file: text} if text is not None else None)


def decode_source(source: str | bytes, filename: str = "<string>") -> str:
    """The source as text: bytes are decoded as UTF-8 (a leading BOM is dropped).

    Raises MLOError for invalid UTF-8 (at the bad byte's line and column) and for sources
    over MAX_SOURCE_BYTES.
    """
    size = len(source)
    if size > MAX_SOURCE_BYTES:
        raise _error(filename, Span(1, 1, 1, 2),
                     f"file is too large ({size / 1048576:.1f} MB; "
                     f"the limit is {MAX_SOURCE_BYTES // 1048576} MB)",
                     "a .mlo program describes problems; put data and code in Python modules")
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            good = source[:exc.start].decode("utf-8", errors="replace")
            line = good.count("\n") + 1
            col = len(good) - (good.rfind("\n") + 1) + 1
            text = source.decode("utf-8", errors="replace")
            raise _error(filename, Span(line, col, line, col + 1),
                         f"invalid UTF-8 (byte 0x{source[exc.start]:02x})",
                         ".mlo files are UTF-8 text", text) from None
    else:
        text = source
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _blank_before(text: str, offset: int) -> str:
    """``text`` with everything before ``offset`` blanked, keeping line and column numbers."""
    head = re.sub(r"[^\r\n]", " ", text[:offset])
    return head + text[offset:]


def _parse_once(text: str, filename: str, start: str):
    """One Lark parse: the result, or (None, diagnostic)."""
    parser, postlex = get_parser(_BUILDER)
    _BUILDER.reset()
    try:
        result = parser.parse(text, start=start)
        return result, None, postlex.comments
    except UnexpectedInput as exc:
        return None, syntax_diagnostic(exc, filename, text, postlex.open_brackets), None
    except TooDeep as exc:
        return None, Diagnostic(filename, exc.span, "error",
                                f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                                "split it with 'let' definitions"), None
    except BadLiteral as exc:
        return None, Diagnostic(filename, exc.span, "error", exc.message), None
    except RecursionError:  # belt and braces: nothing above should recurse
        return None, Diagnostic(filename, Span(1, 1, 1, 2), "error",
                                "program nested too deeply"), None


def _with_errors(diags: list[Diagnostic], filename: str, text: str) -> MLOError:
    return MLOError(diags, sources={filename: text})


def parse(source: str | bytes, filename: str = "<string>") -> ir.Program:
    """Parse a whole ``.mlo`` program into a :class:`~mlodsl.compiler.ir.Program`.

    Raises MLOError carrying every syntax error found (the error's ``sources`` attribute maps
    ``filename`` to the text, for rendering with source lines).
    """
    text = decode_source(source, filename)
    diags: list[Diagnostic] = []
    current = text
    with PARSE_LOCK:
        while True:
            program, diag, comments = _parse_once(current, filename, "start")
            if diag is None:
                break
            diags.append(diag)
            if len(diags) >= MAX_SYNTAX_ERRORS:
                break
            # Resume at the next line (after the error) that starts a top-level statement.
            line = diag.span.line if diag.span else 10**9
            offset = _line_offset(text, line + 1)
            match = _RESUME.search(text, offset) if offset is not None else None
            if match is None:
                break
            current = _blank_before(text, match.start())
    if diags:
        raise _with_errors(diags, filename, text)
    assert program is not None
    program = ir.Program(
        file=filename, items=program.items, span=program.span,
        comments=tuple(ir.Comment(t.value.rstrip(), Span(t.line, t.column, t.end_line,
                                                        t.end_column)) for t in comments))
    return program


def _line_offset(text: str, line: int) -> int | None:
    """The offset where 1-based ``line`` starts, or None past the end."""
    offset = 0
    for _ in range(line - 1):
        nl = text.find("\n", offset)
        if nl < 0:
            return None
        offset = nl + 1
    return offset


def parse_expression(text: str, filename: str = "<override>") -> ir.Expr:
    """Parse one expression (for ``mlodsl run --set NAME.FIELD=VALUE`` overrides).

    Raises MLOError for anything that is not exactly one expression.
    """
    text = decode_source(text, filename)
    with PARSE_LOCK:
        expr, diag, _ = _parse_once(text, filename, "expression")
    if diag is not None:
        raise _with_errors([diag], filename, text)
    return expr
