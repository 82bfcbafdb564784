"""Static checks of literal values: settings' rules and hypergradient method calls.

A value is checked only when it is known before running: a literal, a negated number, or a
``let`` bound (possibly through other lets) to one. Anything else is accepted here and
checked by the back end when it has the value, against the same rule of
:mod:`mlodsl.settings` (so both say the same thing).
"""
from __future__ import annotations

from typing import Callable, Mapping

from mlodsl.compiler import ir
from mlodsl.diagnostics import did_you_mean
from mlodsl.methods import METHODS, BadMethodArgument
from mlodsl.settings import Setting

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


def _via_let(expr: ir.Expr, lets: Mapping[str, ir.Let]) -> str | None:
    if isinstance(expr, ir.Name) and expr.name in lets:
        return f"'{expr.name}' is defined at line {lets[expr.name].name_span.line}"
    return None


def check_value(spec: Setting, field: ir.Field, owner: str,
                lets: Mapping[str, ir.Let], report: Report) -> None:
    """Check a field's literal value against its setting's rule; report problems."""
    if spec.method:
        check_method(field.value, lets, report)
        return
    if spec.rule is None:
        return
    value = literal_value(field.value, lets)
    if value is UNKNOWN or spec.rule.accepts(value):
        return
    report(field.value.span, spec.rule.message(f"'{field.name}' of {owner}", value),
           spec.rule.hint_for(value) or _via_let(field.value, lets))


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
