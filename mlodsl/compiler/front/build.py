"""Lark callbacks that build the IR while the LALR parser reduces (private to the front end).

Run inside the parser (Lark's "internal transformer"), the callbacks never recurse and no
parse tree is built. Lark does not pass positions to internal transformers, so each node's
span is the union of its first and last child's spans (brackets and keywords are named
terminals in the grammar precisely so they reach these callbacks).

A callback may raise :class:`BadLiteral` or :class:`TooDeep`; ``parse.py`` turns them into
diagnostics.
"""
from __future__ import annotations

from dataclasses import dataclass

from lark import Token, Transformer

from mlodsl.compiler import ir
from mlodsl.compiler.front.lexing import MAX_DEPTH, TooDeep, token_span
from mlodsl.diagnostics import Span

__all__ = ["IRBuilder", "BadLiteral", "decode_string"]


class BadLiteral(Exception):
    """Text the grammar accepts but the language does not: a 5,000-digit integer, a
    positional argument after a keyword argument."""

    def __init__(self, span: Span, message: str):
        super().__init__(message)
        self.span = span
        self.message = message


@dataclass
class _Block:
    """The fields between ``{`` and ``}``, before they become a Problem or Engine."""

    fields: list
    span: Span


@dataclass
class _Header:
    """The settings between ``<`` and ``>`` of a problem's header."""

    settings: list


def _span_of(x) -> Span:
    if isinstance(x, Token):
        return token_span(x)
    return x.span


def _join(first, last) -> Span:
    a, b = _span_of(first), _span_of(last)
    return Span(a.line, a.column, b.end_line, b.end_column)


def _clean(children) -> list:
    # Optional parts that did not match may leave None behind.
    return [c for c in children if c is not None]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"',
            "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def decode_string(raw: str) -> str:
    """The value of a quoted string literal, with Python's common backslash escapes.

    Unknown escapes keep their backslash, as in Python. No ``eval`` is involved.
    """
    body = raw[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(nxt)
        digits = body[i + 2:i + 2 + width] if width else ""
        if width and len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits):
            code = int(digits, 16)
            if code <= 0x10FFFF:
                out.append(chr(code))
                i += 2 + width
                continue
        out.append(ch)
        i += 1
    return "".join(out)


class IRBuilder(Transformer):
    """The parser's callbacks: one per rule or alias of ``mlo.lark``."""

    def __init__(self):
        super().__init__(visit_tokens=False)
        self._depth: dict[int, int] = {}

    def reset(self) -> None:
        """Forget the previous parse's bookkeeping."""
        self._depth = {}

    # -------------------------------------------------------------- expression helpers

    def _expr(self, node, *children):
        """Record ``node``'s nesting depth and refuse it beyond MAX_DEPTH."""
        depth = 1 + max((self._depth.get(id(c), 1) for c in children), default=0)
        if depth > MAX_DEPTH:
            raise TooDeep(node.span)
        self._depth[id(node)] = depth
        return node

    # -------------------------------------------------------------- program

    def start(self, children):
        items = []
        for c in _clean(children):
            if isinstance(c, list):
                items.extend(c)
        if items:
            span = _join(items[0], items[-1])
        else:
            span = Span(1, 1, 1, 1)
        return ir.Program(items=tuple(items), span=span)

    def expression(self, children):
        (expr,) = _clean(children)
        return expr

    def items(self, children):
        children = _clean(children)
        if isinstance(children[0], list):
            children[0].append(children[-1])
            return children[0]
        return [children[0]]

    fields = items

    def from_import(self, children):
        children = _clean(children)
        module, mspan = children[1]
        names = tuple(c for c in children[3:] if isinstance(c, ir.ImportName))
        return ir.Import(module, names=names, span=_join(children[0], children[-1]),
                         module_span=mspan)

    def plain_import(self, children):
        children = _clean(children)
        module, mspan = children[1]
        asname = children[3].value if len(children) > 3 else None
        last = children[-1] if len(children) > 3 else None
        span = _join(children[0], last) if last is not None else Span(
            children[0].line, children[0].column, mspan.end_line, mspan.end_column)
        return ir.Import(module, asname=asname, span=span, module_span=mspan)

    def alias(self, children):
        children = _clean(children)
        asname = children[2].value if len(children) > 2 else None
        return ir.ImportName(children[0].value, asname, span=_join(children[0], children[-1]))

    def dotted(self, children):
        children = _clean(children)
        return ".".join(t.value for t in children), _join(children[0], children[-1])

    def let(self, children):
        children = _clean(children)
        name, value = children[1], children[-1]
        return ir.Let(name.value, value, span=_join(children[0], value),
                      name_span=token_span(name))

    # -------------------------------------------------------------- problems

    def problem(self, children):
        children = _clean(children)
        name = children[1]
        block = children[-1]
        edges = tuple(c for c in children if isinstance(c, ir.Edge))
        header = next((c for c in children if isinstance(c, _Header)), None)
        return ir.Problem(name.value, edges, tuple(block.fields),
                          span=_join(children[0], block), name_span=token_span(name),
                          settings=tuple(header.settings) if header is not None else ())

    def header(self, children):
        return _Header([c for c in _clean(children) if isinstance(c, ir.Setting)])

    def setting(self, children):
        name, value = _clean(children)
        return ir.Setting(name.value, value, span=_join(name, value), name_span=token_span(name))

    def edge(self, children):
        children = _clean(children)
        target = children[0]
        every = None
        every_span = ir.NO_SPAN
        method = None
        i = 1
        while i < len(children):
            c = children[i]
            if isinstance(c, Token) and c.type == "EVERY":
                every = children[i + 1]
                every_span = every.span
                i += 2
            elif isinstance(c, Token) and c.type == "VIA":
                method = children[i + 1]
                i += 2
            else:  # pragma: no cover - the grammar allows nothing else
                i += 1
        return ir.Edge(target.value, every, method, span=_join(target, children[-1]),
                       target_span=token_span(target), every_span=every_span)

    def engine(self, children):
        children = _clean(children)
        block = children[-1]
        return ir.Engine(tuple(block.fields), span=_join(children[0], block))

    def block(self, children):
        children = _clean(children)
        fields = next((c for c in children if isinstance(c, list)), [])
        return _Block(fields, _join(children[0], children[-1]))

    def field(self, children):
        children = _clean(children)
        name, value = children[0], children[-1]
        params = None
        param_spans: tuple = ()
        if len(children) > 2:  # NAME LPAR params RPAR value
            toks = children[2]
            params = tuple(t.value for t in toks)
            param_spans = tuple(token_span(t) for t in toks)
        return ir.Field(name.value, value, params, span=_join(name, value),
                        name_span=token_span(name), param_spans=param_spans)

    def params(self, children):
        return _clean(children)

    # -------------------------------------------------------------- expressions

    def binop(self, children):
        left, op, right = _clean(children)
        return self._expr(ir.BinOp(op.value, left, right, span=_join(left, right)), left, right)

    def unaryop(self, children):
        op, operand = _clean(children)
        return self._expr(ir.UnaryOp(op.value, operand, span=_join(op, operand)), operand)

    def call(self, children):
        children = _clean(children)
        func, rpar = children[0], children[-1]
        args: list = []
        kwargs: list = []
        for c in children[1:-1]:
            if isinstance(c, list):
                for a in c:
                    if isinstance(a, ir.Keyword):
                        kwargs.append(a)
                    elif kwargs:
                        raise BadLiteral(a.span, "positional argument follows keyword argument")
                    else:
                        args.append(a)
        node = ir.Call(func, tuple(args), tuple(kwargs), span=_join(func, rpar))
        return self._expr(node, func, *args, *(k.value for k in kwargs))

    def arguments(self, children):
        return _clean(children)

    def keyword(self, children):
        name, value = _clean(children)
        return ir.Keyword(name.value, value, span=_join(name, value))

    def attribute(self, children):
        value, name = _clean(children)
        node = ir.Attribute(value, name.value, span=_join(value, name),
                            attr_span=token_span(name))
        return self._expr(node, value)

    def index(self, children):
        value, _lsqb, sub, rsqb = _clean(children)
        if len(sub) == 1:
            index = sub[0]
        else:
            index = self._expr(ir.TupleExpr(tuple(sub), span=_join(sub[0], sub[-1])), *sub)
        return self._expr(ir.Index(value, index, span=_join(value, rsqb)), value, index)

    def subscript(self, children):
        return _clean(children)

    def name(self, children):
        (tok,) = children
        return ir.Name(tok.value, span=token_span(tok))

    def _int(self, tok: Token) -> int:
        text = tok.value.replace("_", "")
        if len(text) > 1000:
            raise BadLiteral(token_span(tok), "integer literal is too long")
        return int(text)

    def int_const(self, children):
        (tok,) = children
        return ir.Constant(self._int(tok), span=token_span(tok), raw=tok.value)

    def float_const(self, children):
        (tok,) = children
        return ir.Constant(float(tok.value.replace("_", "")), span=token_span(tok), raw=tok.value)

    def string_const(self, children):
        (tok,) = children
        return ir.Constant(decode_string(tok.value), span=token_span(tok), raw=tok.value)

    def true_const(self, children):
        return ir.Constant(True, span=token_span(children[0]))

    def false_const(self, children):
        return ir.Constant(False, span=token_span(children[0]))

    def none_const(self, children):
        return ir.Constant(None, span=token_span(children[0]))

    def paren(self, children):
        _lpar, expr, _rpar = _clean(children)
        return expr

    def tuple_expr(self, children):
        children = _clean(children)
        items = tuple(children[1:-1])
        node = ir.TupleExpr(items, span=_join(children[0], children[-1]))
        return self._expr(node, *items)

    def list_expr(self, children):
        children = _clean(children)
        items = tuple(children[1:-1])
        node = ir.ListExpr(items, span=_join(children[0], children[-1]))
        return self._expr(node, *items)
