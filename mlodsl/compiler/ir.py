"""The typed IR of a ``.mlo`` program: frozen dataclasses, each carrying its source span.

The IR is the one structure every compiler stage reads (``check``, ``fmt``, ``resolve``,
``lower``). Every node has a ``span`` (and some a second span for their name) so any stage can
report a diagnostic at the right place. Spans, the file name and the raw spelling of numbers
do not take part in ``==``: two programs that differ only in layout compare equal, which is
what the formatter's round-trip guarantee (``parse(fmt(src)) == parse(src)``) relies on.

Example::

    >>> from mlodsl.compiler.front.parse import parse_expression
    >>> parse_expression("net.fc") == Attribute(Name("net"), "fc")
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from mlodsl.diagnostics import Span

__all__ = [
    "Node", "Expr", "Name", "Attribute", "Call", "Keyword", "Index", "UnaryOp", "BinOp",
    "Constant", "ListExpr", "TupleExpr", "Comment", "ImportName", "Import", "Let", "Edge",
    "Field", "Setting", "Problem", "Engine", "Program", "Item", "iter_expr", "ExprVisitor",
    "NO_SPAN",
]

#: The span of nodes built by hand (tests, the Python API) rather than parsed.
NO_SPAN = Span(0, 0, 0, 0)


def _span():
    """A span field that ``==`` ignores."""
    return field(default=NO_SPAN, compare=False, repr=False)


# ---------------------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Name:
    """A name: a batch name, a problem, a ``let``, an import or a built-in."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Attribute:
    """``value.attr``; ``attr_span`` covers the attribute's name."""

    value: "Expr"
    attr: str
    span: Span = _span()
    attr_span: Span = _span()


@dataclass(frozen=True)
class Keyword:
    """A keyword argument ``name=value`` of a call."""

    name: str
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    """``func(*args, **kwargs)``; keyword arguments keep their source order."""

    func: "Expr"
    args: tuple["Expr", ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Index:
    """``value[index]``; ``x[a, b]`` has a :class:`TupleExpr` index."""

    value: "Expr"
    index: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class UnaryOp:
    """``-operand`` or ``+operand``."""

    op: str
    operand: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with ``op`` one of ``+ - * / @ **``."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Constant:
    """A literal: int, float, str, bool or None. ``raw`` keeps a number's spelling (``5e-4``)."""

    value: int | float | str | bool | None
    span: Span = _span()
    raw: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ListExpr:
    """``[a, b, ...]``."""

    items: tuple["Expr", ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class TupleExpr:
    """``(a, b, ...)``, ``(a,)`` or ``()``."""

    items: tuple["Expr", ...] = ()
    span: Span = _span()


Expr = Union[Name, Attribute, Call, Index, UnaryOp, BinOp, Constant, ListExpr, TupleExpr]


def iter_expr(expr: "Expr") -> Iterator["Expr"]:
    """Every expression node under ``expr`` (itself included), in source order, iteratively."""
    stack: list = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Attribute):
            children = [node.value]
        elif isinstance(node, Call):
            children = [node.func, *node.args, *(kw.value for kw in node.kwargs)]
        elif isinstance(node, Index):
            children = [node.value, node.index]
        elif isinstance(node, UnaryOp):
            children = [node.operand]
        elif isinstance(node, BinOp):
            children = [node.left, node.right]
        elif isinstance(node, (ListExpr, TupleExpr)):
            children = list(node.items)
        else:
            children = []
        stack.extend(reversed(children))


class ExprVisitor:
    """The one walk over IR expressions: one overridable method per kind of node.

    The expression interpreter (:class:`mlodsl.compiler.back.interpret.Interpreter`), the fx
    loss-graph builder (its subclass, :class:`mlodsl.compiler.back.loss_graph.GraphBuilder`,
    the way ``torch.fx.Transformer`` subclasses ``torch.fx.Interpreter``) and the formatter
    (:func:`mlodsl.compiler.front.fmt.format_expr`) all walk expressions through this class.
    :meth:`visit` picks the method for the node's kind; each method receives the node and
    returns whatever the walk produces (a value, an fx node, a string):

    ========================  ==============  ===========================================
    node                      method          spelling
    ========================  ==============  ===========================================
    :class:`Name`             ``name``        ``x``
    :class:`Attribute`        ``attribute``   ``value.attr``
    :class:`Call`             ``call``        ``func(a, k=v)``
    :class:`Index`            ``index``       ``value[index]``
    :class:`UnaryOp`          ``unary``       ``-x``, ``+x``
    :class:`BinOp`            ``binop``       ``a + b``, ``a @ b``, ``a ** b``, ...
    :class:`Constant`         ``constant``    ``1``, ``0.5``, ``"s"``, ``True``, ``None``
    :class:`ListExpr`,        ``sequence``    ``[a, b]``, ``(a, b)``
    :class:`TupleExpr`
    ========================  ==============  ===========================================

    A walk recurses by calling :meth:`visit` (or its own driver) on the children it needs.
    A method left undefined raises ``NotImplementedError`` when its kind of node is met.

    Example::

        >>> class Names(ExprVisitor):
        ...     def name(self, node): return [node.name]
        ...     def binop(self, node): return self.visit(node.left) + self.visit(node.right)
        >>> Names().visit(BinOp("+", Name("a"), Name("b")))
        ['a', 'b']
    """

    def visit(self, node: "Expr"):
        """Dispatch ``node`` to the method for its kind."""
        method = _VISIT.get(type(node))
        if method is None:
            return self.unknown(node)
        return getattr(self, method)(node)

    def unknown(self, node):
        """A node that is not an expression (an IR invariant broken)."""
        raise TypeError(f"not an expression: {node!r}")

    def _missing(self, node):
        raise NotImplementedError(f"{type(self).__name__} does not handle "
                                  f"{type(node).__name__} nodes")

    name = attribute = call = index = unary = binop = constant = sequence = _missing


_VISIT = {Name: "name", Attribute: "attribute", Call: "call", Index: "index",
          UnaryOp: "unary", BinOp: "binop", Constant: "constant", ListExpr: "sequence",
          TupleExpr: "sequence"}


# ---------------------------------------------------------------------------- statements

@dataclass(frozen=True)
class Comment:
    """A ``# ...`` comment (kept for the formatter); ``text`` includes the ``#``."""

    text: str
    span: Span = _span()


@dataclass(frozen=True)
class ImportName:
    """One ``name [as asname]`` of a ``from`` import."""

    name: str
    asname: str | None = None
    span: Span = _span()

    @property
    def bound(self) -> str:
        """The name this alias binds in the program."""
        return self.asname or self.name


@dataclass(frozen=True)
class Import:
    """``from module import a, b as c`` (``names`` set) or ``import module [as asname]``."""

    module: str
    names: tuple[ImportName, ...] | None = None
    asname: str | None = None
    span: Span = _span()
    module_span: Span = _span()

    @property
    def is_from(self) -> bool:
        """True for the ``from ... import ...`` form."""
        return self.names is not None

    def bindings(self) -> list[tuple[str, Span]]:
        """The names this import binds, with where each is bound.

        ``import a.b`` binds ``a``; ``import a.b as c`` binds ``c``.
        """
        if self.names is not None:
            return [(n.bound, n.span) for n in self.names]
        return [(self.asname or self.module.split(".")[0], self.module_span)]


@dataclass(frozen=True)
class Let:
    """``let name = value``."""

    name: str
    value: Expr
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Edge:
    """One ``depends`` target: ``target [every N] [via method(...)]``.

    ``every`` is the expression after ``every`` (any integer expression: ``5``, a ``let``,
    ``2 * k``); ``method`` is the expression after ``via`` (a :class:`Call`, or a :class:`Name`
    for a method given without parentheses); the checker validates both.
    """

    target: str
    every: Expr | None = None
    method: Expr | None = None
    span: Span = _span()
    target_span: Span = _span()
    every_span: Span = _span()


@dataclass(frozen=True)
class Field:
    """``name = value``, or ``loss(a, b) = value`` with ``params == ("a", "b")``."""

    name: str
    value: Expr
    params: tuple[str, ...] | None = None
    span: Span = _span()
    name_span: Span = _span()
    param_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Setting:
    """One ``key=value`` of a problem's header ``problem P <key=value, ...>``.

    The keys are Betty's ``Config`` fields (:data:`mlodsl.methods.CONFIG_SETTINGS`, plus the
    seed's ``step``); the checker validates them.
    """

    name: str
    value: Expr
    span: Span = _span()
    name_span: Span = _span()


def _find_field(fields: tuple[Field, ...], name: str) -> Field | None:
    for f in fields:
        if f.name == name:
            return f
    return None


@dataclass(frozen=True)
class Problem:
    """``problem name <settings> depends edges { fields }`` (the header ``<...>`` optional)."""

    name: str
    edges: tuple[Edge, ...] = ()
    fields: tuple[Field, ...] = ()
    span: Span = _span()
    name_span: Span = _span()
    settings: tuple[Setting, ...] = ()

    def setting(self, name: str) -> Setting | None:
        """The (first) header setting called ``name`` (``step`` answers for
        ``unroll_steps`` and the other way round), or None."""
        names = {name, *(("unroll_steps", "step") if name in ("unroll_steps", "step") else ())}
        for s in self.settings:
            if s.name in names:
                return s
        return None

    def field(self, name: str) -> Field | None:
        """The (first) field called ``name``, or None."""
        return _find_field(self.fields, name)

    @property
    def depends(self) -> tuple[str, ...]:
        """The names this problem depends on, in source order."""
        return tuple(e.target for e in self.edges)


@dataclass(frozen=True)
class Engine:
    """``engine { fields }``."""

    fields: tuple[Field, ...] = ()
    span: Span = _span()

    def field(self, name: str) -> Field | None:
        """The (first) field called ``name``, or None."""
        return _find_field(self.fields, name)


Item = Union[Import, Let, Problem, Engine]


@dataclass(frozen=True)
class Program:
    """A whole ``.mlo`` file.

    ``items`` holds every top-level statement in source order (the formatter reads it);
    ``imports``, ``lets`` and ``problems`` are the same statements by kind, duplicates
    included (the checker reports them). ``engine`` is the first ``engine`` block, or None.
    """

    file: str = field(default="<string>", compare=False)
    items: tuple[Item, ...] = ()
    comments: tuple[Comment, ...] = ()
    span: Span = _span()

    @property
    def imports(self) -> tuple[Import, ...]:
        """The import statements, in source order."""
        return tuple(i for i in self.items if isinstance(i, Import))

    @property
    def lets(self) -> tuple[Let, ...]:
        """The ``let`` statements, in source order."""
        return tuple(i for i in self.items if isinstance(i, Let))

    @property
    def problems(self) -> tuple[Problem, ...]:
        """The problems, in source order."""
        return tuple(i for i in self.items if isinstance(i, Problem))

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every ``engine`` block (a valid program has exactly one)."""
        return tuple(i for i in self.items if isinstance(i, Engine))

    @property
    def engine(self) -> Engine | None:
        """The first ``engine`` block, or None."""
        engines = self.engines
        return engines[0] if engines else None

    def problem(self, name: str) -> Problem | None:
        """The (first) problem called ``name``, or None."""
        for p in self.problems:
            if p.name == name:
                return p
        return None

    def let(self, name: str) -> Let | None:
        """The (first) ``let`` called ``name``, or None."""
        for item in self.lets:
            if item.name == name:
                return item
        return None


Node = Union[Expr, Keyword, Comment, ImportName, Import, Let, Edge, Field, Setting, Problem,
             Engine, Program]
