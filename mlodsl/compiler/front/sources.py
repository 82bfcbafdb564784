"""Where IR nodes come from: the program's file or the text of a ``--set`` override.

A :class:`SourceMap` maps each node to the label of the text it was parsed from, and keeps
those texts, so that every diagnostic points at the right file and renders its caret there.
"""
from __future__ import annotations

from typing import Any

from mlodsl.compiler import ir
from mlodsl.diagnostics import Diagnostic, MLOError, Span

__all__ = ["SourceMap"]


class SourceMap:
    """Where nodes come from: the program's file, or the text of an override.

    ``sources`` maps file labels to their text (for rendering carets); nodes registered with
    :meth:`add` belong to another label than ``default``.
    """

    def __init__(self, default: str, text: str | None = None):
        self.default = default
        self.sources: dict[str, str] = {default: text} if text is not None else {}
        self._files: dict[int, str] = {}
        self._keep: list = []  # keep registered nodes alive: ids must stay unique

    def add(self, node: Any, file: str, text: str) -> None:
        """Record that ``node`` and every expression under it come from ``file``."""
        self.sources[file] = text
        self._keep.append(node)
        exprs = ir.iter_expr(node) if not isinstance(node, (ir.Field, ir.Keyword, ir.Let)) \
            else ir.iter_expr(node.value)
        for n in exprs:
            self._files[id(n)] = file
        self._files[id(node)] = file

    def file_of(self, node: Any) -> str:
        """The label of the file ``node`` comes from."""
        return self._files.get(id(node), self.default)

    def error(self, node: Any, message: str, hint: str | None = None, *,
              kind: str = "program", span: Span | None = None) -> MLOError:
        """An MLOError at ``node`` (or ``span``), with this map's sources for rendering."""
        where = span if span is not None else getattr(node, "span", None)
        if where == ir.NO_SPAN:
            where = None
        return MLOError(Diagnostic(self.file_of(node), where, "error", message, hint), kind=kind,
                        sources=self.sources)

    def diagnostic(self, node: Any, message: str, hint: str | None = None,
                   severity: str = "warning") -> Diagnostic:
        """A diagnostic (a warning by default) at ``node``."""
        where = getattr(node, "span", None)
        return Diagnostic(self.file_of(node), None if where == ir.NO_SPAN else where,
                          severity, message, hint)
