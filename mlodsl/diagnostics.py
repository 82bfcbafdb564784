"""Diagnostics: the one way mlodsl reports a problem to its user.

Every user-visible failure, from a typo in a ``.mlo`` file to a diverging run, is an
:class:`MLOError` carrying one or more :class:`Diagnostic` objects. The CLI renders them and
exits with status 2 (program errors) or 1 (run failures); a Python traceback is a bug.

This module never imports torch: ``mlodsl check`` must stay fast.

Example::

    >>> span = Span(line=3, column=5, end_line=3, end_column=9)
    >>> d = Diagnostic("hpo.mlo", span, "error", "unknown name 'clasifier'",
    ...                hint="did you mean 'classifier'?")
    >>> print(render_text([d], {"hpo.mlo": "a\\nb\\nfoo clasifier\\n"}).splitlines()[0])
    hpo.mlo:3:5: error: unknown name 'clasifier'
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = [
    "Span",
    "Diagnostic",
    "MLOError",
    "MLOWarning",
    "render_text",
    "render_json",
    "did_you_mean",
]


@dataclass(frozen=True, order=True)
class Span:
    """A region of source text; lines and columns start at 1, ``end_column`` is exclusive."""

    line: int = 1
    column: int = 1
    end_line: int = 1
    end_column: int = 2


@dataclass(frozen=True)
class Diagnostic:
    """One message about one place: an error, a warning or a note.

    ``file`` may be ``None`` for messages that are not about a source file (a run that
    diverged, a bad ``Engine`` dependency in the Python API); ``span`` is then ``None`` too.
    """

    file: str | None
    span: Span | None
    severity: str  # "error" | "warning" | "note"
    message: str
    hint: str | None = None

    def sort_key(self):
        """Order by file, then position, errors before warnings at the same place."""
        span = self.span or Span(0, 0, 0, 0)
        return (self.file or "", span.line, span.column, self.severity != "error", self.message)

    def headline(self) -> str:
        """``FILE:LINE:COL: severity: message`` (the location is left out when unknown)."""
        where = ""
        if self.file is not None:
            where = self.file + ":"
            if self.span is not None:
                where += f"{self.span.line}:{self.span.column}:"
            where += " "
        return f"{where}{self.severity}: {self.message}"


class MLOError(Exception):
    """The error type of mlodsl: a list of diagnostics, at least one of them an error.

    ``kind`` is ``"program"`` for mistakes in the user's program (exit status 2) and
    ``"run"`` for failures while running it (exit status 1). ``sources`` maps file labels
    to their text, so that :meth:`render` can show the lines and carets; whoever raises the
    error and knows the text passes it (or adds to it with :meth:`add_sources`).
    """

    def __init__(self, diagnostics: Diagnostic | str | Sequence[Diagnostic], *,
                 kind: str = "program", hint: str | None = None,
                 sources: Mapping[str, str] | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(None, None, "error", diagnostics, hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = sorted(diagnostics, key=Diagnostic.sort_key)
        self.kind = kind
        self.sources: dict[str, str] = dict(sources or {})
        super().__init__("\n".join(d.headline() for d in self.diagnostics))

    @property
    def exit_status(self) -> int:
        """2 for a program error, 1 for a run failure."""
        return 2 if self.kind == "program" else 1

    def add_sources(self, sources: Mapping[str, str]) -> "MLOError":
        """Add texts that the error does not have yet (its own stay); returns the error."""
        self.sources = {**sources, **self.sources}
        return self

    def render(self, sources: Mapping[str, str] | None = None) -> str:
        """The diagnostics as text, with source lines and carets (``sources`` or the error's)."""
        return render_text(self.diagnostics, sources or self.sources)


class MLOWarning(UserWarning):
    """A warning about the user's program found while it runs (e.g. a diverging series).

    Its message is already rendered (``FILE:LINE:COL: warning: ...`` and a hint line); the
    CLI prints it as is, and Python users may filter or catch it like any warning.
    """


def _source_line(sources: Mapping[str, str], file: str | None, line: int) -> str | None:
    if file is None or file not in sources:
        return None
    lines = sources[file].splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1]
    return None


_MAX_SHOWN = 120  # longest source line shown whole under a diagnostic


def _clip(text: str, column: int) -> tuple[str, int]:
    """A window of a very long source line around ``column`` (and the column within it)."""
    if len(text) <= _MAX_SHOWN:
        return text, column
    first = max(column - 1 - _MAX_SHOWN // 3, 0)
    window = text[first:first + _MAX_SHOWN]
    prefix = "..." if first > 0 else ""
    suffix = "..." if first + _MAX_SHOWN < len(text) else ""
    return prefix + window + suffix, column - first + len(prefix)


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> str:
    """Render diagnostics like a compiler: headline, source line, caret line, hint line."""
    out: list[str] = []
    for d in diagnostics:
        out.append(d.headline())
        if d.span is not None:
            text = _source_line(sources, d.file, d.span.line)
            if text is not None:
                text = text.expandtabs(1)
                start = max(d.span.column, 1)
                text, start = _clip(text, start)
                out.append("    " + text)
                if d.span.end_line == d.span.line:
                    width = max(d.span.end_column - d.span.column, 1)
                else:
                    width = max(len(text) - start + 1, 1)
                width = min(width, max(len(text) - start + 1, 1))
                out.append("    " + " " * (start - 1) + "^" + "~" * (width - 1))
        if d.hint:
            out.append(f"  hint: {d.hint}")
    return "\n".join(out)


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """Render diagnostics as a JSON list for editors (file, line, column, end, severity, ...)."""
    items = []
    for d in diagnostics:
        item = {"file": d.file, "severity": d.severity, "message": d.message, "hint": d.hint}
        if d.span is not None:
            item.update(line=d.span.line, column=d.span.column,
                        end_line=d.span.end_line, end_column=d.span.end_column)
        items.append(item)
    return json.dumps(items, indent=2)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A ``did you mean 'x'?`` hint when a candidate is close to ``name``, else ``None``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
