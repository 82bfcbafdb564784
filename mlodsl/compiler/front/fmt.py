"""The canonical layout of ``.mlo`` programs (``mlodsl fmt``), printed from the IR.

The layout: one statement per line; imports, then lets, grouped without blank lines; one
blank line around each ``problem`` and ``engine`` block; fields indented by four spaces with
their ``=`` aligned within a block; expressions printed with Python's spacing, double-quoted
strings, numbers as spelled in the source, and only the parentheses precedence needs.
Comments are kept: a comment on its own line stays above the statement or field that
follows it, a comment at the end of a line stays at the end of that line (comments inside a
multi-line expression move above it). A single blank line the author left between fields
or statements is kept.

The guarantee, tested on the corpus: ``parse(format_program(src)) == parse(src)`` (spans
aside), and formatting is idempotent.
"""
from __future__ import annotations

from mlodsl.compiler import ir
from mlodsl.compiler.front.parse import parse

__all__ = ["format_program", "format_ir", "format_expr"]

INDENT = "    "

# Binding strength of each kind of expression (higher binds tighter).
_SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX, _ATOM = 1, 2, 3, 4, 5, 6
_BINARY = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "@": _PRODUCT, "**": _POWER}


def _precedence(e: ir.Expr) -> int:
    if isinstance(e, ir.BinOp):
        return _BINARY.get(e.op, _SUM)
    if isinstance(e, ir.UnaryOp):
        return _UNARY
    if isinstance(e, (ir.Call, ir.Attribute, ir.Index)):
        return _POSTFIX
    return _ATOM


def _quote(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _constant(c: ir.Constant) -> str:
    v = c.value
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, bool) or v is None:
        return repr(v)
    if c.raw is not None:
        return c.raw
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return f'float("{v}")'
    return repr(v)


class _ExprPrinter(ir.ExprVisitor):
    """Prints each kind of expression node (the walk shared with the interpreter)."""

    def wrap(self, sub: ir.Expr, at_least: int) -> str:
        """``sub``, parenthesized when it binds less tightly than ``at_least``."""
        text = self.visit(sub)
        return f"({text})" if _precedence(sub) < at_least else text

    def name(self, e: ir.Name) -> str:
        return e.name

    def constant(self, e: ir.Constant) -> str:
        return _constant(e)

    def binop(self, e: ir.BinOp) -> str:
        prec = _BINARY.get(e.op, _SUM)
        if e.op == "**":  # right-associative; a unary minus on the left needs parentheses
            return f"{self.wrap(e.left, _POSTFIX)} ** {self.wrap(e.right, _UNARY)}"
        return f"{self.wrap(e.left, prec)} {e.op} {self.wrap(e.right, prec + 1)}"

    def unary(self, e: ir.UnaryOp) -> str:
        return f"{e.op}{self.wrap(e.operand, _UNARY)}"

    def attribute(self, e: ir.Attribute) -> str:
        value = self.wrap(e.value, _POSTFIX)
        if isinstance(e.value, ir.Constant) and not isinstance(e.value.value, str):
            value = f"({value})"  # `1.real` would read as a float
        return f"{value}.{e.attr}"

    def call(self, e: ir.Call) -> str:
        args = [self.visit(a) for a in e.args]
        args += [f"{kw.name}={self.visit(kw.value)}" for kw in e.kwargs]
        return f"{self.wrap(e.func, _POSTFIX)}({', '.join(args)})"

    def index(self, e: ir.Index) -> str:
        idx = e.index
        if isinstance(idx, ir.TupleExpr) and len(idx.items) > 1:
            inner = ", ".join(self.visit(i) for i in idx.items)
        else:
            inner = self.visit(idx)
        return f"{self.wrap(e.value, _POSTFIX)}[{inner}]"

    def sequence(self, e: ir.ListExpr | ir.TupleExpr) -> str:
        items = [self.visit(i) for i in e.items]
        if isinstance(e, ir.ListExpr):
            return "[" + ", ".join(items) + "]"
        if len(items) == 1:
            return f"({items[0]},)"
        return "(" + ", ".join(items) + ")"


_PRINTER = _ExprPrinter()


def format_expr(e: ir.Expr) -> str:
    """An expression in canonical form (parenthesized only where precedence needs it)."""
    return _PRINTER.visit(e)


def _import(i: ir.Import) -> str:
    if i.names is not None:
        names = ", ".join(n.name + (f" as {n.asname}" if n.asname else "") for n in i.names)
        return f"from {i.module} import {names}"
    return f"import {i.module}" + (f" as {i.asname}" if i.asname else "")


def _edge(e: ir.Edge) -> str:
    text = e.target
    if e.every is not None:
        text += f" every {format_expr(e.every)}"
    if e.method is not None:
        text += f" via {format_expr(e.method)}"
    return text


def _lhs(f: ir.Field) -> str:
    if f.params is None:
        return f.name
    return f"{f.name}({', '.join(f.params)})"


class _Printer:
    """Emits lines, interleaving the program's comments at their places."""

    def __init__(self, program: ir.Program):
        self.lines: list[str] = []
        self.comments = sorted(program.comments, key=lambda c: (c.span.line, c.span.column))
        self.next = 0

    def pending(self) -> ir.Comment | None:
        """The next comment not printed yet (None when all are)."""
        return self.comments[self.next] if self.next < len(self.comments) else None

    def leading(self, line: int, indent: str) -> None:
        """Emit the comments on lines before ``line``, each on its own line."""
        while (c := self.pending()) is not None and c.span.line < line:
            self.lines.append(indent + c.text)
            self.next += 1
            following = self.pending()
            nxt = following.span.line if following is not None and following.span.line < line \
                else line
            if nxt - c.span.line > 1:
                self.lines.append("")

    def trailing(self, line: int) -> str:
        """The comment at the end of ``line`` (with its two-space gap), or ''."""
        c = self.pending()
        if c is not None and c.span.line == line:
            self.next += 1
            return "  " + c.text
        return ""

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def statement(self, text: str, node, indent: str = "") -> None:
        span = node.span
        self.leading(span.line, indent)
        # Comments inside a multi-line statement move above it.
        while (c := self.pending()) is not None and c.span.line < span.end_line:
            self.lines.append(indent + c.text)
            self.next += 1
        self.lines.append(indent + text + self.trailing(span.end_line))

    def block(self, header: str, node, fields: tuple[ir.Field, ...],
              head_end: int | None = None) -> None:
        span = node.span
        head_end = max(head_end or span.line, span.line)
        self.leading(span.line, "")
        # Comments inside a header written over several lines move above it.
        while (c := self.pending()) is not None and c.span.line < head_end:
            self.lines.append(c.text)
            self.next += 1
        self.lines.append(header + " {" + self.trailing(head_end))
        width = max((len(_lhs(f)) for f in fields), default=0)
        prev_end = head_end
        for f in fields:
            start = f.span.line
            first_comment = self.pending()
            first = first_comment.span.line if (first_comment is not None and
                                                first_comment.span.line < start) else start
            if first - prev_end > 1 and self.lines[-1] != "" and not self.lines[-1].endswith("{"):
                self.lines.append("")
            text = f"{_lhs(f).ljust(width)} = {format_expr(f.value)}"
            self.statement(text, f, INDENT)
            prev_end = f.span.end_line
        self.leading(span.end_line, INDENT)
        self.lines.append("}" + self.trailing(span.end_line))

    def finish(self) -> str:
        while self.next < len(self.comments):
            self.lines.append(self.comments[self.next].text)
            self.next += 1
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n" if self.lines else ""


def _kind(item) -> str:
    return type(item).__name__


def format_ir(program: ir.Program) -> str:
    """The canonical text of a parsed program (comments included)."""
    p = _Printer(program)
    prev = None
    for item in program.items:
        if prev is not None:
            block = isinstance(item, (ir.Problem, ir.Engine)) or isinstance(
                prev, (ir.Problem, ir.Engine))
            c = p.pending()
            start = c.span.line if c is not None and c.span.line < item.span.line \
                else item.span.line
            if block or _kind(item) != _kind(prev) or start - prev.span.end_line > 1:
                p.blank()
        if isinstance(item, ir.Import):
            p.statement(_import(item), item)
        elif isinstance(item, ir.Let):
            p.statement(f"let {item.name} = {format_expr(item.value)}", item)
        elif isinstance(item, ir.Problem):
            header = f"problem {item.name}"
            if item.settings:  # the header form stays the header form
                header += " <" + ", ".join(f"{s.name}={format_expr(s.value)}"
                                           for s in item.settings) + ">"
            if item.edges:
                header += " depends " + ", ".join(_edge(e) for e in item.edges)
            head_end = max([item.name_span.end_line]
                           + [s.span.end_line for s in item.settings]
                           + [e.span.end_line for e in item.edges])
            p.block(header, item, item.fields, head_end)
        elif isinstance(item, ir.Engine):
            p.block("engine", item, item.fields)
        prev = item
    if prev is not None and p.pending() is not None:
        p.blank()
    return p.finish()


def format_program(source: str | bytes, filename: str = "<string>") -> str:
    """Parse ``source`` and return it in canonical layout. Raises MLOError on syntax errors."""
    return format_ir(parse(source, filename))
