"""Evaluating ``.mlo`` expressions over the IR: no Python ``eval``, errors at ``.mlo`` positions.

:class:`Interpreter` walks an IR expression and returns its Python value. Like
``torch.fx.Interpreter``, it is a runner whose steps are overridable methods, all listed here
(the fx loss-graph builder, :class:`~mlodsl.compiler.back.loss_graph.GraphBuilder`, is its
subclass and overrides the per-kind steps to emit graph nodes):

* :meth:`~Interpreter.run` - evaluate one expression (the entry point);
* :meth:`~Interpreter.run_node` - evaluate one node: dispatch on its kind
  (:meth:`~mlodsl.compiler.ir.ExprVisitor.visit`), turn a failure in user code into one
  diagnostic at the node's position, cache values that cannot change;
* :meth:`~Interpreter.name`, :meth:`~Interpreter.attribute`, :meth:`~Interpreter.call`,
  :meth:`~Interpreter.index`, :meth:`~Interpreter.unary`, :meth:`~Interpreter.binop`,
  :meth:`~Interpreter.constant`, :meth:`~Interpreter.sequence` - one per kind of node (the
  table in :class:`~mlodsl.compiler.ir.ExprVisitor`);
* :meth:`~Interpreter.get_attribute` - ``value.attr`` once ``value`` is known (the place that
  refuses dunder attributes and attributes of strings, and that reads a problem's module);
* :meth:`~Interpreter.error` - build the :class:`~mlodsl.diagnostics.MLOError` for a node.

Names are looked up in a :class:`Scope` (LANGUAGE.md section 8: batch names, problems, lets,
imports, built-ins). A :class:`~mlodsl.compiler.front.sources.SourceMap` says which file (the
program or a ``--set`` override) each node came from, so that every diagnostic points at the
right text.

Example::

    >>> from mlodsl.compiler.front.parse import parse_expression
    >>> Interpreter(Scope({"n": 3})).run(parse_expression("[n * 2, -n]"))
    [6, -3]
"""
from __future__ import annotations

import operator
import os
import traceback
from typing import Any, Callable, Iterable, Mapping

from mlodsl.compiler import ir
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.diagnostics import MLOError, Span, did_you_mean

__all__ = ["Scope", "Interpreter", "BINARY_OPS", "UNARY_OPS", "is_dunder", "summarize",
           "user_frame", "describe_exception"]

BINARY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "@": operator.matmul, "**": operator.pow,
}
UNARY_OPS: dict[str, Callable[[Any], Any]] = {"-": operator.neg, "+": operator.pos}

# mlodsl/ (this file is mlodsl/compiler/back/interpret.py)
_MLODSL_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_dunder(name: str) -> bool:
    """``__x__`` names are never reachable from a program (LANGUAGE.md section 8)."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def user_frame(tb) -> str | None:
    """``file:line (in function)`` of the innermost traceback frame in the user's code, or None.

    Frames of mlodsl, of the standard library and of installed packages (torch, ...) are
    skipped: the user wants to know which line of *their* code failed.
    """
    import sysconfig
    skip = {os.path.abspath(p) + os.sep for p in (
        _MLODSL_DIR, sysconfig.get_paths().get("stdlib", ""),
        sysconfig.get_paths().get("purelib", ""), sysconfig.get_paths().get("platlib", ""))
        if p}
    frames = [f for f in traceback.extract_tb(tb)
              if not f.filename.startswith("<")
              and not any(os.path.abspath(f.filename).startswith(s) for s in skip)]
    if not frames:
        return None
    f = frames[-1]
    path = os.path.abspath(f.filename)
    if path.startswith(os.getcwd() + os.sep):
        path = os.path.relpath(path)
    return f"{path}:{f.lineno} (in {f.name})"


def describe_exception(err: BaseException) -> str:
    """``TypeName: message`` on one line (the first line of the message)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class Scope:
    """Layers of names, searched first to last (LANGUAGE.md section 8's order).

    ``dynamic`` names (batch names, problems) change from one evaluation to the next; values
    of expressions that use none of them may be cached.
    """

    def __init__(self, *layers: Mapping[str, Any], dynamic: Iterable[str] = ()):
        self.layers = [dict(layer) for layer in layers]
        self.dynamic = set(dynamic)

    def lookup(self, name: str) -> Any:
        """The value of ``name``; KeyError when it is not in scope."""
        for layer in self.layers:
            if name in layer:
                return layer[name]
        raise KeyError(name)

    def names(self) -> list[str]:
        """Every name in scope (for "did you mean" hints)."""
        out: set[str] = set()
        for layer in self.layers:
            out.update(layer)
        return sorted(out)


class Interpreter(ir.ExprVisitor):
    """Evaluates IR expressions in a :class:`Scope`.

    Args:
        scope: the names in scope.
        sources: where nodes come from (for diagnostics); a bare map of ``"<expr>"`` if None.
        what: how errors name the expression being evaluated (``"the module of 'p'"``).
        cache: a dict in which values of expressions that use no dynamic name are kept
            (``validate`` is evaluated many times; ``digits(split="test")`` is built once).
    """

    def __init__(self, scope: Scope, sources: SourceMap | None = None, what: str = "",
                 cache: dict | None = None):
        self.scope = scope
        self.sources = sources if sources is not None else SourceMap("<expr>")
        self.what = what
        self.cache = cache

    # -- driver ----------------------------------------------------------------------------
    def run(self, expr: ir.Expr) -> Any:
        """The value of ``expr``."""
        return self.run_node(expr)

    def run_node(self, node: ir.Expr) -> Any:
        """Evaluate one node; a failure in user code becomes a diagnostic at ``node``."""
        key = id(node)
        if self.cache is not None and key in self.cache:
            return self.cache[key][1]
        try:
            value = self.visit(node)
        except MLOError:
            raise
        except RecursionError:
            raise self.error(node, "expression nested too deeply to evaluate") from None
        except Exception as err:  # user code failed: one clear message, no traceback
            raise self.user_error(node, err) from None
        if self.cache is not None and self.is_static(node):
            self.cache[key] = (node, value)  # keep node alive so its id stays unique
        return value

    def unknown(self, node: Any) -> Any:
        """A node that is not an expression."""
        raise self.error(node, f"cannot evaluate a {type(node).__name__} here")

    def is_static(self, node: ir.Expr) -> bool:
        """Whether ``node`` uses no dynamic name (its value cannot change between runs)."""
        return not any(isinstance(n, ir.Name) and n.name in self.scope.dynamic
                       for n in ir.iter_expr(node))

    # -- one step per kind of node ----------------------------------------------------------
    def name(self, node: ir.Name) -> Any:
        """Look a name up in the scope."""
        if is_dunder(node.name):
            raise self.error(node, f"dunder name '{node.name}' is not allowed")
        try:
            return self.scope.lookup(node.name)
        except KeyError:
            raise self.error(node, f"unknown name '{node.name}'",
                             did_you_mean(node.name, self.scope.names())) from None

    def attribute(self, node: ir.Attribute) -> Any:
        """``value.attr``."""
        return self.get_attribute(self.run_node(node.value), node.attr, node)

    def get_attribute(self, value: Any, attr: str, node: ir.Attribute) -> Any:
        """``getattr(value, attr)``, refusing dunders and strings; a problem reads its module.

        A problem's attributes are its module's (``classifier.fc0`` is the module's ``fc0``);
        ``classifier.module`` is the module itself.
        """
        span = node.attr_span if node.attr_span != ir.NO_SPAN else None
        if is_dunder(attr):
            raise self.error(node, f"dunder attribute '{attr}' is not allowed", span=span)
        if isinstance(value, str):
            raise self.error(node, "attribute access on a string is not allowed", span=span)
        if _is_problem(value):
            if attr == "module":
                return value.module
            value = value.module
        try:
            return getattr(value, attr)
        except AttributeError:
            public = [n for n in dir(value) if not n.startswith("_")]
            raise self.error(node, f"{_type_name(value)} has no attribute '{attr}'",
                             did_you_mean(attr, public), span=span) from None

    def call(self, node: ir.Call) -> Any:
        """``func(*args, **kwargs)``."""
        func = self.run_node(node.func)
        args = [self.run_node(a) for a in node.args]
        kwargs = {kw.name: self.run_node(kw.value) for kw in node.kwargs}
        if not callable(func):
            raise self.error(node.func, f"{_type_name(func)} is not callable")
        return func(*args, **kwargs)

    def index(self, node: ir.Index) -> Any:
        """``value[index]``."""
        return self.run_node(node.value)[self.run_node(node.index)]

    def unary(self, node: ir.UnaryOp) -> Any:
        """``-x`` or ``+x``."""
        return UNARY_OPS[node.op](self.run_node(node.operand))

    def binop(self, node: ir.BinOp) -> Any:
        """``left op right``."""
        return BINARY_OPS[node.op](self.run_node(node.left), self.run_node(node.right))

    def constant(self, node: ir.Constant) -> Any:
        """A literal."""
        return node.value

    def sequence(self, node: ir.ListExpr | ir.TupleExpr) -> Any:
        """``[a, b]`` or ``(a, b)``."""
        items = [self.run_node(i) for i in node.items]
        return items if isinstance(node, ir.ListExpr) else tuple(items)

    # -- errors --------------------------------------------------------------------------------
    def error(self, node: Any, message: str, hint: str | None = None,
              span: Span | None = None) -> MLOError:
        """An MLOError at ``node`` (program errors: exit status 2)."""
        return self.sources.error(node, message, hint, span=span)

    def user_error(self, node: ir.Expr, err: Exception, subject: ir.Expr | None = None
                   ) -> MLOError:
        """The diagnostic for an exception raised by user code while evaluating ``node``.

        ``subject`` names the expression that failed when it is not ``node`` itself (an
        optimizer call failing because of one overridden argument is reported there).
        """
        what = f"{self.what}: " if self.what else ""
        frame = user_frame(err.__traceback__)
        name = summarize(subject if subject is not None else node)
        return self.error(node, f"{what}{name} failed: {describe_exception(err)}",
                          f"raised at {frame}" if frame else None)


def _is_problem(value: Any) -> bool:
    # Duck-typed so that this module does not need the runtime (and torch) to be imported.
    from sys import modules
    problem_mod = modules.get("mlodsl.runtime.problem")
    return problem_mod is not None and isinstance(value, problem_mod.Problem)


def _type_name(value: Any) -> str:
    if isinstance(value, type(os)):
        return f"module '{value.__name__}'"
    return f"'{type(value).__name__}' object" if not isinstance(value, type) else \
        f"class '{value.__name__}'"


def summarize(node: ir.Expr) -> str:
    """A short spelling of ``node`` for messages (``digits(...)``, ``a + b``)."""
    if isinstance(node, ir.Name):
        return f"'{node.name}'"
    if isinstance(node, ir.Attribute):
        return f"'{_dotted(node) or node.attr}'"
    if isinstance(node, ir.Call):
        name = _dotted(node.func)
        return f"{name}(...)" if name else "the call"
    if isinstance(node, ir.BinOp):
        return f"the '{node.op}' operation"
    if isinstance(node, ir.Index):
        return "indexing"
    return "the expression"


def _dotted(node: ir.Expr) -> str | None:
    if isinstance(node, ir.Name):
        return node.name
    if isinstance(node, ir.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None
