"""Static checks of literal values: counts, choices and hypergradient method calls (private).

A value is checked only when it is known before running: a literal, a negated number, or a
``let`` bound (possibly through other lets) to one. Anything else is accepted here and
checked by the back end when it has the value.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from mlodsl.compiler import ir
from mlodsl.compiler.front.fields import FieldSpec
from mlodsl.diagnostics import did_you_mean
from mlodsl.methods import METHODS, BadMethodArgument

__all__ = ["UNKNOWN", "literal_value", "check_value", "check_method"]

Report = Callable[..., None]


class _Unknown:
    """The value of an expression that is not known statically."""

    def __repr__(self):
        return "UNKNOWN"


UNKNOWN = _Unknown()


def literal_value(expr: ir.Expr, lets: Mapping[str, ir.Let], _depth: int = 0):
    """The Python value of a literal expression, following ``let`` names; else UNKNOWN."""
    if _depth > 50:  # a chain of lets this long is surely a let cycle
        return UNKNOWN
    if isinstance(expr, ir.Constant):
        return expr.value
    if isinstance(expr, ir.UnaryOp):
        inner = literal_value(expr.operand, lets, _depth + 1)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if expr.op == "-" else inner
        return UNKNOWN
    if isinstance(expr, ir.Name) and expr.name in lets:
        return literal_value(lets[expr.name].value, lets, _depth + 1)
    if isinstance(expr, (ir.ListExpr, ir.TupleExpr)):
        items = [literal_value(i, lets, _depth + 1) for i in expr.items]
        if any(i is UNKNOWN for i in items):
            return UNKNOWN
        return items if isinstance(expr, ir.ListExpr) else tuple(items)
    return UNKNOWN


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _via_let(expr: ir.Expr, lets: Mapping[str, ir.Let]) -> str | None:
    if isinstance(expr, ir.Name) and expr.name in lets:
        return f"'{expr.name}' is defined at line {lets[expr.name].name_span.line}"
    return None


def check_value(spec: FieldSpec, field: ir.Field, owner: str,
                lets: Mapping[str, ir.Let], report: Report) -> None:
    """Check a field's literal value against its spec's ``kind``; report problems."""
    if spec.kind == "method":
        check_method(field.value, lets, report)
        return
    value = literal_value(field.value, lets)
    if value is UNKNOWN:
        return
    hint = _via_let(field.value, lets)
    where = f"'{field.name}' of {owner}"
    if spec.kind == "positive_int" and not (_is_int(value) and value >= 1):
        report(field.value.span, f"{where} must be a positive integer, got {value!r}", hint)
    elif spec.kind == "nonneg_int" and not (_is_int(value) and value >= 0):
        report(field.value.span, f"{where} must be an integer >= 0, got {value!r}", hint)
    elif spec.kind == "positive_number" and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        report(field.value.span, f"{where} must be a number > 0, got {value!r}", hint)
    elif spec.kind == "bool" and not isinstance(value, bool):
        report(field.value.span, f"{where} must be True or False, got {value!r}", hint)
    elif spec.kind == "choice":
        ok = isinstance(value, str) and (
            value in spec.choices or (spec.pattern is not None
                                      and re.fullmatch(spec.pattern, value) is not None))
        if not ok:
            options = ", ".join(f'"{c}"' for c in spec.choices)
            guess = did_you_mean(value, spec.choices) if isinstance(value, str) else None
            report(field.value.span, f"{where} must be one of {options}, got {value!r}",
                   guess or hint)


def check_method(expr: ir.Expr, lets: Mapping[str, ir.Let], report: Report) -> None:
    """Check a ``via`` or ``hypergrad`` value: a known method called with valid arguments."""
    if isinstance(expr, ir.Name):
        func, call = expr, None
    elif isinstance(expr, ir.Call) and isinstance(expr.func, ir.Name):
        func, call = expr.func, expr
    else:
        report(expr.span, "expected a hypergradient method, like darts() or neumann(iterations=5)",
               "methods: " + ", ".join(METHODS))
        return
    sig = METHODS.get(func.name)
    if sig is None:
        report(func.span, f"unknown hypergradient method '{func.name}'",
               did_you_mean(func.name, METHODS) or "methods: " + ", ".join(METHODS))
        return
    if call is None:
        return
    if call.args and not sig.positional:
        report(call.args[0].span, f"{sig.name}() takes keyword arguments only",
               f"name the argument, e.g. {sig.name}({sig.arguments[0].name}=...)"
               if sig.arguments else f"{sig.name}() takes no arguments")
        return
    known: dict = {}
    seen: set[str] = set()
    for kw in call.kwargs:
        if kw.name in seen:
            report(kw.span, f"{sig.name}() got argument '{kw.name}' twice")
            continue
        seen.add(kw.name)
        value = literal_value(kw.value, lets)
        if value is UNKNOWN:
            if sig.argument(kw.name) is None:
                # Let bind() produce its usual message for the unknown argument.
                value = None
            else:
                continue
        known[kw.name] = (value, kw)
    args = tuple(literal_value(a, lets) for a in call.args)
    if any(a is UNKNOWN for a in args):
        args = ()
    for name, (value, kw) in known.items():
        try:
            sig.bind({name: value})
        except BadMethodArgument as exc:
            report(kw.span, str(exc), exc.hint or _via_let(kw.value, lets))
    if args:
        try:
            sig.bind({}, args)
        except BadMethodArgument as exc:
            report(call.span, str(exc), exc.hint)
