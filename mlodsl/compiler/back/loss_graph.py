"""Losses as ``torch.fx`` graphs, built from ``loss(...) = expr``.

:func:`build_loss_graph` lowers the IR of ``loss(x, y) = expr`` to a
``torch.fx.GraphModule`` whose root holds every problem's module as a submodule named after
the problem (the same module objects, so the runtime's functional parameter substitution
reaches them). The nodes:

* ``placeholder`` - one per batch name, in order;
* ``call_module`` - ``classifier(x)`` (target ``"classifier"``), or ``classifier.fc0(x)``;
* ``get_attr`` - ``classifier.fc0.weight``, or a bare problem name passed to a function (the
  problem's module: ``weighted_l2(classifier, hpo())``), or a constant too rich to print
  into the graph's code (a tensor, a data set);
* ``call_function`` - imported functions, built-ins and operators (``operator.add``, ...);
* ``call_method`` - methods of values computed in the graph (``(w * l).mean()``).

Sub-expressions that read neither a batch name nor a problem are evaluated once, when the
graph is built (``F.cross_entropy`` is the function itself; ``digits(split="val")`` a data
set). Each node's ``meta["mlo_span"]`` is its position in the ``.mlo`` file: an exception
inside the graph is reported there (:func:`locate_failure`).

Callable losses (``loss = f``) are not built but traced: see :mod:`mlodsl.compiler.back.tracing`.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from mlodsl.compiler import ir
from mlodsl.compiler.back.interpret import BINARY_OPS, UNARY_OPS, Interpreter, Scope, is_dunder
from mlodsl.diagnostics import did_you_mean

__all__ = ["GraphBuilder", "build_loss_graph", "graph_reads", "locate_failure", "module_slot",
           "unpack_batch"]

_LITERALS = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)


_GRAPH_MODULE_NAMES: frozenset[str] | None = None


def module_slot(problem: str) -> str:
    """The name under which ``problem``'s module sits in a loss graph's root.

    The problem's own name, unless ``GraphModule`` itself uses that attribute (``meta``,
    ``graph``, ``code``, ``training``, ...): then a private name that cannot clash.
    """
    global _GRAPH_MODULE_NAMES
    if _GRAPH_MODULE_NAMES is None:
        _GRAPH_MODULE_NAMES = frozenset(dir(fx.GraphModule(nn.Module(), fx.Graph())))
    return f"_mlo_problem_{problem}" if problem in _GRAPH_MODULE_NAMES else problem


@dataclass(frozen=True)
class _ProblemPath:
    """A problem's module, or a path of attributes into it (not yet a graph node)."""

    problem: str
    attrs: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return ".".join((module_slot(self.problem), *self.attrs))


@dataclass(frozen=True)
class _Static:
    """A value known when the graph is built."""

    value: Any


def _call(fn, *args, **kwargs):
    """Call a value computed in the graph (``f(x)(y)``)."""
    return fn(*args, **kwargs)


class GraphBuilder(Interpreter):
    """Walks one loss expression and emits its fx nodes: the interpreter, made symbolic.

    A subclass of :class:`~mlodsl.compiler.back.interpret.Interpreter`, as
    ``torch.fx.Transformer`` subclasses ``torch.fx.Interpreter``: the driver
    (:meth:`run_node`) and the errors are the interpreter's; the per-kind steps (the table in
    :class:`~mlodsl.compiler.ir.ExprVisitor`) are overridden to return fx nodes instead of
    values. A sub-expression that reads neither a batch name nor a problem is static: the
    plain interpreter (``evaluator``) computes its value once, here, and the graph holds the
    value (:meth:`graph_constant`).

    Args:
        evaluator: the interpreter for static sub-expressions (lets, imports, built-ins in
            scope; no batch names, no problems).
        modules: the problems' modules by problem name.
        params: the loss's batch names, in order (the graph's placeholders).
    """

    def __init__(self, evaluator: Interpreter, modules: Mapping[str, nn.Module],
                 params: Sequence[str]):
        super().__init__(Scope(*evaluator.scope.layers, dynamic=set(params) | set(modules)),
                         evaluator.sources, evaluator.what)
        self.evaluator = evaluator
        self.modules = modules
        self.graph = fx.Graph()
        self.root = nn.Module()
        for name, module in modules.items():
            self.root.add_module(module_slot(name), module)
        self.inputs = {name: self.graph.placeholder(name) for name in params}
        for node in self.inputs.values():
            node.meta["mlo_span"] = None
        self._consts = 0
        self._current: ir.Expr | None = None

    # -- driver ----------------------------------------------------------------------------
    def run_node(self, node: ir.Expr) -> Any:
        """A static node's value (``_Static``), else the fx node (or problem path) of ``node``.

        Nodes emitted while ``node`` is visited carry its ``.mlo`` position.
        """
        if self.is_static(node):
            return _Static(self.evaluator.run(node))
        outer, self._current = self._current, node
        try:
            return super().run_node(node)
        finally:
            self._current = outer

    def unknown(self, node: Any) -> Any:
        """A node that cannot appear in a loss."""
        raise self.error(node, f"cannot use a {type(node).__name__} in a loss")

    def value(self, node: ir.Expr) -> Any:
        """``node`` as something an fx node may take as an argument."""
        return self.materialize(self.run_node(node))

    def materialize(self, v: Any) -> Any:
        """A problem path as a ``get_attr`` node, a static value as a graph constant."""
        if isinstance(v, _ProblemPath):
            return self.emit("get_attr", v.target)
        if isinstance(v, _Static):
            return self.graph_constant(v.value)
        return v

    def graph_constant(self, value: Any) -> Any:
        """Literals go into the graph's code; anything else becomes a ``get_attr``."""
        if _printable(value):
            return value
        name = f"_mlo_const{self._consts}"
        self._consts += 1
        if isinstance(value, torch.Tensor):  # a buffer follows the graph to the run's device
            self.root.register_buffer(name, value)
        else:
            setattr(self.root, name, value)
        return self.emit("get_attr", name)

    def emit(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None) -> fx.Node:
        """Add one fx node, tagged with the position of the IR node being visited."""
        node = self.graph.create_node(op, target, args, kwargs or {})
        if self._current is not None:
            node.meta["mlo_span"] = self._current.span
            node.meta["mlo_file"] = self.sources.file_of(self._current)
        return node

    # -- one step per kind of (non-static) node ------------------------------------------------
    def name(self, node: ir.Name) -> Any:
        """A batch name is its placeholder; a problem name is a path to its module."""
        return self.inputs[node.name] if node.name in self.inputs else _ProblemPath(node.name)

    def index(self, node: ir.Index) -> Any:
        """``value[index]`` as ``operator.getitem``."""
        return self.emit("call_function", operator.getitem,
                         (self.value(node.value), self.value(node.index)))

    def unary(self, node: ir.UnaryOp) -> Any:
        """``-x`` as ``operator.neg`` (``+x``: ``operator.pos``)."""
        return self.emit("call_function", UNARY_OPS[node.op], (self.value(node.operand),))

    def binop(self, node: ir.BinOp) -> Any:
        """``a op b`` as the operator's function."""
        return self.emit("call_function", BINARY_OPS[node.op],
                         (self.value(node.left), self.value(node.right)))

    def sequence(self, node: ir.ListExpr | ir.TupleExpr) -> Any:
        """A list or tuple of graph arguments."""
        items = [self.value(i) for i in node.items]
        return items if isinstance(node, ir.ListExpr) else tuple(items)

    def attribute(self, node: ir.Attribute) -> Any:
        """A path into a problem's module, or ``getattr`` of a value computed in the graph."""
        if is_dunder(node.attr):
            raise self.error(node, f"dunder attribute '{node.attr}' is not allowed")
        base = self.run_node(node.value)
        if isinstance(base, _ProblemPath):
            if node.attr == "module" and not base.attrs:
                return base  # classifier.module is the module itself
            path = _ProblemPath(base.problem, base.attrs + (node.attr,))
            self._check_path(path, node)
            return path
        return self.emit("call_function", getattr, (self.materialize(base), node.attr))

    def call(self, node: ir.Call) -> Any:
        """``call_module``, ``call_method`` or ``call_function``, by what is called."""
        args = tuple(self.value(a) for a in node.args)
        kwargs = {kw.name: self.value(kw.value) for kw in node.kwargs}
        func = node.func
        if isinstance(func, ir.Attribute) and not self.is_static(func.value):
            base = self.run_node(func.value)
            if not isinstance(base, _ProblemPath):  # a method of a value computed in the graph
                return self.emit("call_method", func.attr, (self.materialize(base), *args), kwargs)
        f = self.run_node(func)
        if isinstance(f, _ProblemPath):
            obj = self._resolve(f)
            if isinstance(obj, nn.Module):
                return self.emit("call_module", f.target, args, kwargs)
            if f.attrs:  # a method of the module or of one of its tensors
                owner = _ProblemPath(f.problem, f.attrs[:-1])
                return self.emit("call_method", f.attrs[-1],
                                 (self.materialize(owner), *args), kwargs)
            raise self.error(node.func, f"'{f.target}' is not callable")
        if isinstance(f, _Static):
            if not callable(f.value):
                raise self.error(node.func, f"'{type(f.value).__name__}' object is not callable")
            return self.emit("call_function", f.value, args, kwargs)
        return self.emit("call_function", _call, (f, *args), kwargs)

    def _resolve(self, path: _ProblemPath) -> Any:
        obj = self.modules[path.problem]
        for a in path.attrs:
            obj = getattr(obj, a)
        return obj

    def _check_path(self, path: _ProblemPath, node: ir.Attribute) -> None:
        try:
            self._resolve(path)
        except AttributeError:
            parent = self._resolve(_ProblemPath(path.problem, path.attrs[:-1]))
            public = [n for n in dir(parent) if not n.startswith("_")]
            raise self.error(
                node, f"the module of '{path.problem}' has no attribute "
                f"'{'.'.join(path.attrs)}'", did_you_mean(node.attr, public),
                span=node.attr_span if node.attr_span != ir.NO_SPAN else None) from None


def _printable(value: Any) -> bool:
    """Whether fx can write ``value`` into the generated code as a literal."""
    if isinstance(value, _LITERALS):
        return not isinstance(value, float) or value == value and abs(value) != float("inf")
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return all(_printable(v) for v in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _printable(v) for k, v in value.items())
    return False


def build_loss_graph(field: ir.Field, interp: Interpreter,
                     modules: Mapping[str, nn.Module]) -> fx.GraphModule:
    """The ``GraphModule`` of ``loss(a, b, ...) = expr`` (see the module docstring).

    ``interp`` evaluates the static sub-expressions (its scope must not hold the batch names or
    the problems); ``modules`` are the problems' modules by problem name.
    """
    b = GraphBuilder(interp, modules, field.params or ())
    out = b.value(field.value)
    b.graph.output(out)
    gm = fx.GraphModule(b.root, b.graph, class_name="Loss")
    # GraphModule copies what get_attr/call_module name; a dotted target may have created a
    # fresh container on the way. Re-attach the problems' own modules, so every path in the
    # graph reaches the live (and functionally substituted) parameters.
    for name, module in modules.items():
        setattr(gm, module_slot(name), module)
    return gm


def graph_reads(gm: fx.GraphModule, problems: Sequence[str]) -> list[str]:
    """The problems a loss graph reads (calls or reaches into), in ``problems`` order."""
    used = {str(n.target).split(".")[0] for n in gm.graph.nodes
            if n.op in ("call_module", "get_attr")}
    return [p for p in problems if module_slot(p) in used]


_ASSIGN = re.compile(r"^\s*(\w+)\s*=")


def locate_failure(gm: fx.GraphModule, tb) -> fx.Node | None:
    """The graph node whose line of generated code raised, from a traceback; or None."""
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<eval_with_key>"):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    if lineno is None:
        return None
    lines = gm.code.splitlines()
    if not 1 <= lineno <= len(lines):
        return None
    m = _ASSIGN.match(lines[lineno - 1])
    if m is None:
        return None
    for node in gm.graph.nodes:
        if node.name == m.group(1):
            return node
    return None


def unpack_batch(batch: Any, names: Sequence[str]) -> list[Any]:
    """The values of a loss's batch names, from one batch (see docs/language.md).

    One name: the whole batch (a one-element tuple or list is unwrapped). Several names: the
    batch's items in order (a tuple or list of exactly that length), or, for a dict batch, the
    entries with those keys.
    """
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise ValueError(f"the batch is a dict with keys {sorted(batch)}, but the loss "
                             f"names {', '.join(missing)}")
        return [batch[n] for n in names]
    if len(names) == 1:
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            return [batch[0]]
        return [batch]
    if not isinstance(batch, (list, tuple)):
        raise ValueError(f"the loss names {len(names)} parts of the batch "
                         f"({', '.join(names)}), but a batch is a {type(batch).__name__}")
    if len(batch) != len(names):
        raise ValueError(f"the loss names {len(names)} parts of the batch "
                         f"({', '.join(names)}), but a batch has {len(batch)}")
    return list(batch)
