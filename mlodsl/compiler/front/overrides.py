"""Overrides: ``--set NAME.FIELD=VALUE`` (and ``mlodsl.compile(..., overrides=...)``).

An override replaces a piece of the program's IR before it is checked and lowered:

* ``engine.iterations=100`` - a field of the engine (added when absent);
* ``classifier.batch_size=32`` - a field of a problem (added when absent);
* ``hpo.optimizer.lr=1e-4`` - one keyword argument of a field whose value is a call;
* ``batch=32`` - a ``let``;
* ``hpo.every=5``, ``hpo.via=neumann(iterations=5)`` - every ``depends`` edge of ``hpo``;
  ``hpo.classifier.every=5`` - the edge ``hpo depends classifier`` only;
* ``classifier.scheduler=None`` - clears an optional field (``hpo.via=None`` an edge's ``via``,
  ``hpo.every=None`` its ``every``).

The value is parsed with :func:`~mlodsl.compiler.front.parse.parse_expression`; it must be
data, not code (a literal, a name the program binds, or a call of such a name with literal
arguments: :mod:`mlodsl.compiler.front.override_values`). The whole program is then checked
again, so a bad override gets the same diagnostics as bad source; they point into
the override's own text (labelled ``--set TARGET``).

Example::

    >>> o = parse_override("hpo.optimizer.lr=1e-4")
    >>> o.target, o.value.value
    (('hpo', 'optimizer', 'lr'), 0.0001)
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mlodsl.compiler import ir
from mlodsl.compiler.front.names import BUILTINS
from mlodsl.compiler.front.override_values import bound_names, check_value
from mlodsl.compiler.front.parse import parse_expression
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.diagnostics import Diagnostic, MLOError, Span, did_you_mean
from mlodsl.settings import ENGINE_FIELDS, PROBLEM_FIELDS

__all__ = ["Override", "parse_override", "override_from_value", "apply_overrides",
           "relocate", "shadowed_hypergrads", "from_mapping", "error_at"]

_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*=")


@dataclass(frozen=True)
class Override:
    """One override: its target path, its value expression and the text it came from."""

    target: tuple[str, ...]
    value: ir.Expr
    label: str
    text: str

    @property
    def span(self) -> Span:
        """Where the target is written in :attr:`text`."""
        n = len(".".join(self.target))
        start = len(self.text) - len(self.text.lstrip())
        return Span(1, start + 1, 1, start + n + 1)


def _error(label: str, text: str, span: Span | None, message: str,
           hint: str | None = None) -> MLOError:
    return MLOError(Diagnostic(label, span, "error", message, hint), sources={label: text})


def error_at(o: Override, message: str, hint: str | None = None) -> MLOError:
    """An error pointing at the target of override ``o`` (rendered with its text)."""
    return _error(o.label, o.text, o.span, message, hint)


def parse_override(text: str, label: str | None = None) -> Override:
    """Parse ``TARGET=VALUE``; the value's columns are those of ``text`` (for carets)."""
    m = _TARGET.match(text)
    if m is None or "\n" in text:
        raise _error(label or "--set", text, Span(1, 1, 1, max(len(text), 1) + 1),
                     f"expected NAME.FIELD=VALUE, got {text!r}",
                     "e.g. --set engine.iterations=100 or --set hpo.optimizer.lr=1e-4")
    target = tuple(m.group(1).split("."))
    label = label or f"--set {m.group(1)}"
    blanked = " " * m.end() + text[m.end():]
    if not text[m.end():].strip():
        raise _error(label, text, Span(1, m.end(), 1, m.end() + 1),
                     f"no value after '{m.group(1)}='")
    try:
        value = parse_expression(blanked, label)
    except MLOError as err:
        err.sources = {label: text}  # the override's whole text, not the blanked one
        raise
    return Override(target, value, label, text)


def override_from_value(target: str, value: Any) -> Override:
    """An override from a Python value (``overrides={"engine.iterations": 30}``).

    Values must be literals (numbers, strings, booleans, None, lists/tuples/dicts of them);
    bind other objects with ``namespace=`` and refer to them by name.
    """
    if not _literal(value):
        raise MLOError(f"override {target!r}: the value must be a literal (number, string, "
                       f"bool, None, list, tuple), got {type(value).__name__}",
                       hint="bind Python objects with compile(..., namespace={...}) and "
                            "override with their name: overrides=['a.b=name']")
    text = f"{target}={_spell(value)}"
    return parse_override(text)


def _literal(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_literal(i) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and k.isidentifier() and _literal(i) for k, i in v.items())
    return False


def _spell(v: Any) -> str:
    if isinstance(v, dict):
        return "dict(" + ", ".join(f"{k}={_spell(i)}" for k, i in v.items()) + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_spell(i) for i in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(_spell(i) for i in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def apply_overrides(program: ir.Program, overrides: Iterable[Override],
                    sources: SourceMap) -> ir.Program:
    """``program`` with every override applied (later ones win); raises MLOError for a bad
    target. The override's nodes are registered in ``sources``."""
    names = bound_names(program, BUILTINS)
    for o in overrides:
        sources.add(o.value, o.label, o.text)
        check_value(o.value, names, _value_error(o, sources))
        program = _apply(program, o, sources)
    return program


def _value_error(o: Override, sources: SourceMap):
    """The ``fail`` callback of :func:`check_value`: a diagnostic inside ``o``'s text."""
    def fail(node, message: str, hint: str | None = None, span: Span | None = None):
        where = span or getattr(node, "span", None)
        return _with_sources(_error(o.label, o.text, where, message, hint), sources)
    return fail


def _apply(program: ir.Program, o: Override, sources: SourceMap) -> ir.Program:
    fail = lambda msg, hint=None: _with_sources(  # noqa: E731
        _error(o.label, o.text, o.span, msg, hint), sources)
    head = o.target[0]
    blocks = ["engine"] + [p.name for p in program.problems]
    if len(o.target) == 1:
        if program.let(head) is None:
            lets = [let.name for let in program.lets]
            if head in blocks:
                raise fail(f"'{head}' needs a field: {head}.FIELD=VALUE")
            raise fail(f"unknown let '{head}'", did_you_mean(head, lets + blocks))
        items = tuple(dataclasses.replace(i, value=o.value)
                      if isinstance(i, ir.Let) and i.name == head else i for i in program.items)
        return dataclasses.replace(program, items=items)
    if head not in blocks:
        raise fail(f"unknown problem '{head}'", did_you_mean(head, blocks))
    if len(o.target) > 3:
        raise fail(f"cannot override '{'.'.join(o.target)}': use BLOCK.FIELD=VALUE or "
                   "BLOCK.FIELD.KEYWORD=VALUE")
    field_name = o.target[1]
    table = ENGINE_FIELDS if head == "engine" else PROBLEM_FIELDS
    where = "the engine" if head == "engine" else f"problem '{head}'"
    if head != "engine" and field_name not in table:
        edge_part = _edge_part(program, o, fail)
        if edge_part is not None:
            return _apply_to_edges(program, o, *edge_part)
    if field_name not in table:
        raise fail(f"unknown field '{field_name}' in {where}",
                   did_you_mean(field_name, list(table) + (
                       [] if head == "engine" else list(_EDGE_PARTS))))
    block = program.engine if head == "engine" else program.problem(head)
    if block is None:
        raise fail("the program has no 'engine' block to override")
    old = block.field(field_name)
    if _is_none(o.value) and len(o.target) == 2:
        if table[field_name].required:
            raise fail(f"'{field_name}' of {where} is required: it cannot be cleared with None")
        fields = tuple(f for f in block.fields if f is not old)
        new_block = dataclasses.replace(block, fields=fields)
        items = tuple(new_block if i is block else i for i in program.items)
        return dataclasses.replace(program, items=items)
    if len(o.target) == 3:
        kw = o.target[2]
        if old is None or not isinstance(old.value, ir.Call):
            raise fail(f"cannot override '{kw}' of {head}.{field_name}: "
                       + ("the field is not set" if old is None else "its value is not a call"),
                       f"override the whole field: --set {head}.{field_name}=...")
        call = old.value
        kwargs = list(call.kwargs)
        new_kw = ir.Keyword(kw, o.value, o.value.span)
        sources.add(new_kw, o.label, o.text)
        for i, k in enumerate(kwargs):
            if k.name == kw:
                kwargs[i] = new_kw
                break
        else:
            kwargs.append(new_kw)
        new_field = dataclasses.replace(old, value=dataclasses.replace(call, kwargs=tuple(kwargs)))
    elif old is not None:
        new_field = dataclasses.replace(old, value=o.value)
    else:
        new_field = ir.Field(field_name, o.value, None, o.value.span, o.span)
        sources.add(new_field, o.label, o.text)
    fields = tuple(new_field if f is old else f for f in block.fields)
    if old is None:
        fields = fields + (new_field,)
    new_block = dataclasses.replace(block, fields=fields)
    items = tuple(new_block if i is block else i for i in program.items)
    return dataclasses.replace(program, items=items)


_EDGE_PARTS = ("every", "via")


def _is_none(expr: ir.Expr) -> bool:
    return isinstance(expr, ir.Constant) and expr.value is None


def _edge_part(program: ir.Program, o: Override, fail) -> tuple[str, tuple[str, ...]] | None:
    """For ``P.every``/``P.via`` (every edge of P) and ``P.L.every``/``P.L.via`` (the edge
    ``P depends L``): ``(part, lowers)``; None when the target names no edge."""
    problem = program.problem(o.target[0])
    lowers = tuple(e.target for e in problem.edges)
    if len(o.target) == 2 and o.target[1] in _EDGE_PARTS:
        if not lowers:
            raise fail(f"'{problem.name}' depends on nothing: it has no edge to set "
                       f"'{o.target[1]}' on")
        return o.target[1], lowers
    if len(o.target) == 3 and o.target[1] in lowers:
        if o.target[2] not in _EDGE_PARTS:
            raise fail(f"an edge has 'every' and 'via', not '{o.target[2]}'",
                       did_you_mean(o.target[2], _EDGE_PARTS))
        return o.target[2], (o.target[1],)
    if len(o.target) == 3 and o.target[1] not in PROBLEM_FIELDS and lowers:
        raise fail(f"'{problem.name}' has no field or edge '{o.target[1]}'",
                   did_you_mean(o.target[1], list(PROBLEM_FIELDS) + list(lowers)))
    return None


def _apply_to_edges(program: ir.Program, o: Override, part: str,
                    lowers: tuple[str, ...]) -> ir.Program:
    """Set (or, with None, clear) ``every`` or ``via`` on the named edges of problem P."""
    problem = program.problem(o.target[0])
    value = None if _is_none(o.value) else o.value
    edges = []
    for e in problem.edges:
        if e.target in lowers:
            if part == "every":
                e = dataclasses.replace(e, every=value,
                                        every_span=o.value.span if value is not None
                                        else ir.NO_SPAN)
            else:
                e = dataclasses.replace(e, method=value)
        edges.append(e)
    new = dataclasses.replace(problem, edges=tuple(edges))
    items = tuple(new if i is problem else i for i in program.items)
    return dataclasses.replace(program, items=items)


def shadowed_hypergrads(program: ir.Program, overrides: Iterable[Override]) -> list[Diagnostic]:
    """Warnings for ``--set P.hypergrad=...`` / ``engine.hypergrad`` that some edges ignore.

    An edge's method is its ``via``, else its problem's ``hypergrad``, else the engine's: an
    override of a ``hypergrad`` does not reach an edge that decides earlier in that order.
    """
    out = []
    for o in overrides:
        if len(o.target) != 2 or o.target[1] != "hypergrad":
            continue
        head = o.target[0]
        problems = program.problems if head == "engine" else \
            [p for p in program.problems if p.name == head]
        missed = []
        for p in problems:
            for e in p.edges:
                if e.method is not None:
                    missed.append(f"'{p.name} depends {e.target}' (its 'via')")
                elif head == "engine" and p.field("hypergrad") is not None:
                    missed.append(f"'{p.name} depends {e.target}' ('hypergrad' of '{p.name}')")
        if missed:
            first = missed[0].split("'")[1].split(" depends ")
            out.append(Diagnostic(
                o.label, o.span, "warning",
                f"'{'.'.join(o.target)}' does not change " + ", ".join(missed)
                + ": a method set closer to the edge wins",
                f"override the edge itself: --set {first[0]}.{first[1]}.via=..."))
    return out


def _with_sources(err: MLOError, sources: SourceMap) -> MLOError:
    return err.add_sources(sources.sources)


def relocate(diagnostics: Iterable[Diagnostic], before: Iterable[Diagnostic], program_file: str,
             overrides: list[Override]) -> list[Diagnostic]:
    """Diagnostics of the overridden program, new ones pointing into the override they're from.

    The checker reports every diagnostic against the program's file; one that the original
    program did not have and whose span lies inside an override's value is moved there.
    """
    seen = set(before)
    out = []
    for d in diagnostics:
        if d not in seen and d.file == program_file and d.span is not None:
            for o in reversed(overrides):
                v = o.value.span
                if d.span.line == 1 and v.column <= d.span.column and \
                        d.span.end_column <= v.end_column:
                    d = dataclasses.replace(d, file=o.label)
                    break
        out.append(d)
    return out


def from_mapping(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[Override]:
    """Overrides from ``compile(overrides=...)``: a dict of literals or a list of strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [override_from_value(k, v) for k, v in overrides.items()]
    if isinstance(overrides, str):
        overrides = [overrides]
    return [t if isinstance(t, Override) else parse_override(t) for t in overrides]
