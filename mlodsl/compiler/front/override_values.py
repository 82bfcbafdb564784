"""What the VALUE of a ``--set`` override may be: data, not code.

An override comes from a command line, so it must not be able to run code the program never
asked for. :func:`check_value` accepts exactly:

* a **literal**: a number, a string, ``True``/``False``/``None``, a list or tuple of literals,
  ``dict(key=literal, ...)``, ``-literal``, and arithmetic (``+ - * / **``) between literals;
* a **name the program binds**: a ``let``, an imported name, a problem, or a built-in name of
  the language (``SGD``, ``darts``, ``dict``, ...; LANGUAGE.md section 8);
* a **call of such a name with literal arguments** (or such names as arguments):
  ``Adam(lr=1e-3, betas=(0.9, 0.99))``, ``darts(alpha=0.1)``, ``toy(8, seed=3)``,
  ``check(classifier)``.

Nothing else: no attribute access (``F.torch.os.makedirs(...)`` would reach ``os`` through an
import), no subscripts, no calls of calls. Arithmetic is evaluated here first, with bounds, so
that nothing can hang or blow up the compiler (``10**10**10``, ``"x" * 10**12``): integers stay
under :data:`MAX_INT_BITS` bits, strings and sequences under :data:`MAX_LENGTH` items.

Every refusal is an :class:`~mlodsl.diagnostics.MLOError` at the offending part of the
override's text (exit status 2).

Example::

    >>> from mlodsl.compiler.front.parse import parse_expression
    >>> check_value(parse_expression("Adam(lr=2 * 1e-3)"), {"Adam"}, lambda n, m, h=None, s=None: m)
    >>> check_value(parse_expression("F.os"), {"F"}, lambda n, m, h=None, s=None: ValueError(m))
    Traceback (most recent call last):
    ...
    ValueError: an override value may not read attributes ('.os'): give a literal, a name the program binds, or a call of such a name with literal arguments
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from mlodsl.compiler import ir
from mlodsl.diagnostics import did_you_mean

__all__ = ["check_value", "bound_names", "MAX_INT_BITS", "MAX_LENGTH"]

#: The largest integer an override's arithmetic may produce, in bits (2**256 and beyond refused).
MAX_INT_BITS = 256
#: The longest string, list or tuple an override's arithmetic may produce.
MAX_LENGTH = 1_000_000

_RULE = "give a literal, a name the program binds, or a call of such a name with literal arguments"

# ``fail(node, message, hint=None)`` returns the exception to raise.
Fail = Callable[..., BaseException]


def bound_names(program: ir.Program, builtins: Iterable[str]) -> set[str]:
    """The names an override value may use: lets, imported names, problems and the
    language's built-ins."""
    names = set(builtins)
    names.update(let.name for let in program.lets)
    names.update(p.name for p in program.problems)
    for imp in program.imports:
        names.update(name for name, _ in imp.bindings())
    return names


def check_value(expr: ir.Expr, names: set[str], fail: Fail) -> None:
    """Raise ``fail(node, message, hint)`` unless ``expr`` is an allowed override value."""
    if isinstance(expr, ir.Name):
        _check_name(expr, names, fail)
        return
    if isinstance(expr, ir.Call) and isinstance(expr.func, ir.Name) and \
            expr.func.name != "dict":
        _check_name(expr.func, names, fail)
        for arg in list(expr.args) + [kw.value for kw in expr.kwargs]:
            _literal(arg, names, fail)
        return
    _literal(expr, names, fail)


def _check_name(node: ir.Name, names: set[str], fail: Fail) -> None:
    if node.name not in names:
        raise fail(node, f"unknown name '{node.name}'",
                   did_you_mean(node.name, sorted(names)) or
                   "an override may name a let, an import of the program or a built-in")


def _literal(node: ir.Expr, names: set[str], fail: Fail) -> Any:
    """The value of a literal expression, computed within bounds (or a refusal)."""
    if isinstance(node, ir.Constant):
        return _bounded(node, node.value, fail)
    if isinstance(node, (ir.ListExpr, ir.TupleExpr)):
        items = [_literal(i, names, fail) for i in node.items]
        return items if isinstance(node, ir.ListExpr) else tuple(items)
    if isinstance(node, ir.UnaryOp):
        value = _literal(node.operand, names, fail)
        if value is _BOUND:
            raise fail(node, "arithmetic in an override works on literals only, not on names",
                       "bind the computed value with a let in the program")
        if not _is_number(value):
            raise fail(node, f"'{node.op}' needs a number in an override value")
        return -value if node.op == "-" else value
    if isinstance(node, ir.BinOp):
        return _binop(node, _literal(node.left, names, fail), _literal(node.right, names, fail),
                      fail)
    if isinstance(node, ir.Call) and isinstance(node.func, ir.Name) and node.func.name == "dict":
        if node.args:
            raise fail(node, "dict(...) in an override takes keyword arguments only",
                       'e.g. dict(metric="acc", mode="max")')
        _check_name(node.func, names, fail)
        return {kw.name: _literal(kw.value, names, fail) for kw in node.kwargs}
    if isinstance(node, ir.Attribute):
        while isinstance(node.value, ir.Attribute):  # name the first step into the chain
            node = node.value
        span = node.attr_span if node.attr_span != ir.NO_SPAN else None
        raise fail(node, f"an override value may not read attributes ('.{node.attr}'): {_RULE}",
                   "bind what you need in the program (a let or `from MODULE import NAME`) "
                   "and name it", span)
    if isinstance(node, ir.Index):
        raise fail(node, f"an override value may not take subscripts: {_RULE}")
    if isinstance(node, ir.Name):  # a bound name passed as it is (nothing computed on it)
        _check_name(node, names, fail)
        return _BOUND
    if isinstance(node, ir.Call) and isinstance(node.func, (ir.Attribute, ir.Index)):
        return _literal(node.func, names, fail)  # the attribute or subscript is what is refused
    if isinstance(node, ir.Call):
        raise fail(node, f"a nested call is not allowed in an override value: {_RULE}")
    raise fail(node, f"not allowed in an override value: {_RULE}")


class _Bound:
    """Stands for a bound name inside a literal: passed along, never computed with."""

    def __repr__(self) -> str:
        return "a name"


_BOUND = _Bound()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounded(node: ir.Expr, value: Any, fail: Fail) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and \
            value.bit_length() > MAX_INT_BITS:
        raise fail(node, f"integer too large for an override (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(node, "the override's arithmetic overflows (not a finite number)")
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_LENGTH:
        raise fail(node, f"value too long for an override (more than {MAX_LENGTH:,} items)")
    return value


def _binop(node: ir.BinOp, left: Any, right: Any, fail: Fail) -> Any:
    op = node.op
    if left is _BOUND or right is _BOUND:
        raise fail(node, "arithmetic in an override works on literals only, not on names",
                   "bind the computed value with a let in the program")
    if op == "**":
        if not (_is_number(left) and _is_number(right)):
            raise fail(node, "'**' needs numbers in an override value")
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
                (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
            raise fail(node, f"integer too large for an override (more than {MAX_INT_BITS} bits)")
        if isinstance(right, int) and abs(right) > 10**6 and _is_number(left) and abs(left) > 1:
            raise fail(node, "exponent too large for an override")
    elif op == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)):
                if not isinstance(n, int) or isinstance(n, bool):
                    raise fail(node, "a string or sequence may only be repeated an integer "
                               "number of times")
                if len(seq) * max(n, 0) > MAX_LENGTH:
                    raise fail(node, f"value too long for an override (more than "
                               f"{MAX_LENGTH:,} items)")
    elif op not in ("+", "-", "/"):
        raise fail(node, f"'{op}' is not allowed in an override value")
    if op == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)) and \
            len(left) + len(right) > MAX_LENGTH:
        raise fail(node, f"value too long for an override (more than {MAX_LENGTH:,} items)")
    import operator
    fn = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "**": operator.pow}[op]
    try:
        value = fn(left, right)
    except (ArithmeticError, TypeError, ValueError) as err:
        raise fail(node, f"cannot compute this override value: {type(err).__name__}: {err}"
                   ) from None
    if isinstance(value, complex):
        raise fail(node, "the override's arithmetic gives a complex number")
    return _bounded(node, value, fail)
