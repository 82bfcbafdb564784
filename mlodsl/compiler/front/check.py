"""Static checks of a parsed ``.mlo`` program (LANGUAGE.md sections 4, 5, 6, 8 and 9).

``check(program)`` returns every error and warning of the program, sorted by position; it
never raises for a mistake in the program. The checks:

* structure: one ``engine`` block, at least one problem, no duplicate problems, lets or
  fields, required fields present, unknown fields (with "did you mean"), parameters only on
  ``loss``;
* names, with the scoping of section 8: batch names only inside their loss; problem names
  in problem and engine fields; ``let`` names (a let sees only the lets above it); imported
  names; built-ins. No dunder names or attributes, no attributes of strings;
* the ``depends`` graph: unknown targets, self-dependency, cycles (listed in order, at the
  edge that closes them), declared ``level``\\ s, modules referring to each other in a cycle;
* values known statically: ``every``, ``iterations``, ``batch_size`` and the other counts
  positive; hypergradient methods known, with valid arguments (``mlodsl.methods``);
* reads: a loss may read only problems connected to its own by ``depends`` edges; warnings
  when a hypergradient is necessarily zero.

Imports are not resolved here (that would import the user's modules, and torch): the
resolver reports an import that fails.
"""
from __future__ import annotations

from typing import Iterable

from mlodsl.compiler import ir
from mlodsl.compiler.front.graph import back_edges, reachable_all, reverse
from mlodsl.compiler.front.graph import levels as _graph_levels
from mlodsl.compiler.front.names import BUILTINS
from mlodsl.compiler.front.settings import check_settings
from mlodsl.compiler.front.values import (UNKNOWN, _via_let, check_method, check_value,
                                          literal_value)
from mlodsl.diagnostics import Diagnostic, Span, did_you_mean
from mlodsl.settings import ENGINE_FIELDS, PROBLEM_FIELDS, Setting

__all__ = ["check", "levels", "dependency_graph", "loss_reads", "errors", "summary"]

_FILE_START = Span(1, 1, 1, 2)


# ---------------------------------------------------------------------------- graph helpers

def _first_problems(program: ir.Program) -> dict[str, ir.Problem]:
    """Problems by name, the first declaration winning (duplicates are reported elsewhere)."""
    out: dict[str, ir.Problem] = {}
    for p in program.problems:
        out.setdefault(p.name, p)
    return out


def _adjacency(program: ir.Program) -> tuple[dict[str, list[str]], dict[str, list[ir.Edge]]]:
    """``{upper: [lower, ...]}`` over valid edges, and the Edge objects in the same order."""
    problems = _first_problems(program)
    graph: dict[str, list[str]] = {name: [] for name in problems}
    edges: dict[str, list[ir.Edge]] = {name: [] for name in problems}
    for name, p in problems.items():
        for e in p.edges:
            if e.target in problems and e.target != name and e.target not in graph[name]:
                graph[name].append(e.target)
                edges[name].append(e)
    return graph, edges


def dependency_graph(program: ir.Program):
    """The ``depends`` graph as a ``networkx.DiGraph``: an edge upper -> lower per dependency.

    Nodes are problem names (attribute ``problem``: the IR node); edges carry ``every``
    (int, default 1), ``method`` (the ``via`` expression or None) and ``edge`` (the IR
    node). Unknown targets, self-loops and repeated edges are left out (``check`` reports
    them). networkx is imported here, not at module level, to keep ``mlodsl check`` fast.
    """
    import networkx as nx

    graph, edges = _adjacency(program)
    problems = _first_problems(program)
    g = nx.DiGraph()
    for name in graph:
        g.add_node(name, problem=problems[name])
    for upper, lowers in graph.items():
        for lower, e in zip(lowers, edges[upper]):
            g.add_edge(upper, lower, every=static_every(e, program), method=e.method, edge=e)
    return g


def static_every(edge: ir.Edge, program: ir.Program) -> int | str:
    """An edge's ``every`` as an int when it is known statically (a literal or a ``let`` bound
    to one; 1 when absent), else its source text (``2 * k``)."""
    if edge.every is None:
        return 1
    value = literal_value(edge.every, {let.name: let for let in program.lets})
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    from mlodsl.compiler.front.fmt import format_expr
    return format_expr(edge.every)


def levels(program: ir.Program) -> dict[str, int]:
    """Each problem's level: 0 when it depends on nothing, else 1 + the highest below it.

    Returns ``{}`` when the ``depends`` graph has a cycle (levels are then undefined).
    """
    graph, _ = _adjacency(program)
    if back_edges(graph):
        return {}
    return _graph_levels(graph)


def loss_reads(problem: ir.Problem, program: ir.Program | None = None) -> set[str]:
    """The names a problem's loss expression reads, other than its batch names.

    With ``program``, only problem names are kept: the problems the loss *reads* (calls,
    reaches attributes of, or passes on). A callable loss (``loss = f``, no parameters) reads
    nothing statically (the back end traces it); so does a problem without a loss.
    """
    f = problem.field("loss")
    if f is None or f.params is None:
        return set()
    names = {n.name for n in ir.iter_expr(f.value) if isinstance(n, ir.Name)}
    names -= set(f.params)
    if program is not None:
        names &= {p.name for p in program.problems}
    return names


def errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """The diagnostics that are errors."""
    return [d for d in diagnostics if d.severity == "error"]


def summary(program: ir.Program) -> str:
    """``N problems, M levels`` (for ``mlodsl check``'s one-line report)."""
    n = len(_first_problems(program))
    lv = levels(program)
    depth = (max(lv.values()) + 1) if lv else 0
    s = lambda k, word: f"{k} {word}" + ("" if k == 1 else "s")  # noqa: E731
    return f"{s(n, 'problem')}, {s(depth, 'level')}"


# ---------------------------------------------------------------------------- the checker

class _Checker:
    """One run of the checks over one program; collects diagnostics."""

    def __init__(self, program: ir.Program):
        self.program = program
        self.file = program.file
        self.out: list[Diagnostic] = []
        self.problems = _first_problems(program)
        # The Program's by-kind views rebuild a tuple on each access: take them once.
        self.let_list = program.lets
        self.problem_list = program.problems
        self.lets: dict[str, ir.Let] = {}
        for let in self.let_list:
            self.lets.setdefault(let.name, let)
        self.let_names = set(self.lets)
        self.imported: dict[str, Span] = {}
        for imp in program.imports:
            for name, span in imp.bindings():
                self.imported.setdefault(name, span)
        self.graph, self.edges = _adjacency(program)

    # -- reporting

    def error(self, span, message, hint=None):
        self.out.append(Diagnostic(self.file, span, "error", message, hint))

    def warning(self, span, message, hint=None):
        self.out.append(Diagnostic(self.file, span, "warning", message, hint))

    # -- driver

    def run(self) -> list[Diagnostic]:
        self.check_structure()
        self.check_lets()
        for p in self.problem_list:
            self.check_problem(p)
        for e in self.program.engines:
            self.check_block(e.fields, ENGINE_FIELDS, "the engine", "engine", e.span)
            self.check_early_stop(e)
        self.check_graph()
        self.check_modules()
        self.check_reads()
        self.check_nesting()
        unique = list(dict.fromkeys(self.out))
        return sorted(unique, key=Diagnostic.sort_key)

    # -- structure

    def check_structure(self):
        prog = self.program
        if not prog.engines:
            self.error(_FILE_START, "the program has no 'engine' block",
                       "add 'engine { iterations = 1000 }'")
        for extra in prog.engines[1:]:
            self.error(Span(extra.span.line, extra.span.column, extra.span.line,
                            extra.span.column + 6),
                       "duplicate 'engine' block",
                       f"the first one is at line {prog.engines[0].span.line}")
        if not prog.problems:
            self.error(_FILE_START, "the program declares no problem",
                       "add 'problem NAME { module = ... optimizer = ... data = ... loss = ... }'")
        for p in prog.problems:
            first = self.problems[p.name]
            if first is not p:
                self.error(p.name_span, f"duplicate problem '{p.name}'",
                           f"the first one is at line {first.name_span.line}")
        for let in prog.lets:
            first = self.lets[let.name]
            if first is not let:
                self.error(let.name_span, f"duplicate let '{let.name}'",
                           f"the first one is at line {first.name_span.line}")

    # -- names

    def check_names(self, expr: ir.Expr, scope: "_Scope"):
        """Report unknown names, dunders and attributes of strings in ``expr``."""
        for node in ir.iter_expr(expr):
            if isinstance(node, ir.Name):
                if _is_dunder(node.name):
                    self.error(node.span, f"dunder name '{node.name}' is not allowed")
                elif not scope.has(node.name):
                    scope.report_unknown(self, node)
            elif isinstance(node, ir.Attribute):
                if _is_dunder(node.attr):
                    self.error(node.attr_span, f"dunder attribute '{node.attr}' is not allowed")
                if isinstance(node.value, ir.Constant) and isinstance(node.value.value, str):
                    self.error(node.attr_span, "attribute access on a string is not allowed")
            elif isinstance(node, ir.Call):
                seen: set[str] = set()
                for kw in node.kwargs:
                    if kw.name in seen:
                        self.error(kw.span, f"keyword argument '{kw.name}' repeated")
                    seen.add(kw.name)

    def check_lets(self):
        for i, let in enumerate(self.let_list):
            scope = _Scope(self, let_index=i)
            self.check_names(let.value, scope)

    # -- problems and blocks

    def check_problem(self, p: ir.Problem):
        where = f"problem '{p.name}'"
        self.check_block(p.fields, PROBLEM_FIELDS, where, "problem", p.name_span, problem=p)
        seen: set[str] = set()
        for e in p.edges:
            if e.target == p.name:
                self.error(e.target_span, f"problem '{p.name}' depends on itself")
            elif e.target not in self.problems:
                self.error(e.target_span, f"'{p.name}' depends on unknown problem '{e.target}'",
                           did_you_mean(e.target, [n for n in self.problems if n != p.name]))
            elif e.target in seen:
                self.error(e.target_span, f"'{p.name}' depends on '{e.target}' twice")
            seen.add(e.target)
            if e.every is not None:
                self.check_every(p, e)
            if e.method is not None:
                check_method(e.method, self.lets, self.error)
                for arg in _method_arguments(e.method):
                    self.check_names(arg, _Scope(self))
        check_settings(p, self.problems, self.lets, self.error, self.warning,
                       lambda expr: self.check_names(expr, _Scope(self)))
        hg = p.field("hypergrad")
        if hg is not None and not p.edges:
            self.warning(hg.name_span, f"'hypergrad' of '{p.name}' has no effect: "
                         f"'{p.name}' depends on nothing")

    def check_every(self, p: ir.Problem, e: ir.Edge):
        """``every EXPR``: names in scope (lets, imports, built-ins), an integer >= 1 when known."""
        self.check_names(e.every, _Scope(self))
        value = literal_value(e.every, self.lets)
        hint = f"'every N' lets '{e.target}' step N times per step of '{p.name}'"
        if value is UNKNOWN:
            return  # an expression: checked when the program is compiled
        via = _via_let(e.every, self.lets)
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(e.every_span, f"'every' must be an integer, got {value!r}",
                       via or hint)
        elif value < 1:
            self.error(e.every_span, f"'every' must be >= 1, got {value}", via or hint)

    def check_block(self, fields: tuple[ir.Field, ...], table: dict[str, Setting],
                    where: str, kind: str, at: Span, problem: ir.Problem | None = None):
        other = ENGINE_FIELDS if table is PROBLEM_FIELDS else PROBLEM_FIELDS
        seen: dict[str, ir.Field] = {}
        guessed: set[str] = set()  # required fields that an unknown field was probably meant as
        for f in fields:
            spec = table.get(f.name)
            if f.name in seen:
                self.error(f.name_span, f"duplicate field '{f.name}' in {where}",
                           f"the first one is at line {seen[f.name].name_span.line}")
            seen.setdefault(f.name, f)
            if spec is None:
                hint = did_you_mean(f.name, table)
                guessed.update(n for n in table if hint == f"did you mean '{n}'?")
                if hint is None and f.name in other:
                    hint = f"'{f.name}' is a field of " + (
                        "the engine" if other is ENGINE_FIELDS else "problems")
                self.error(f.name_span, f"unknown field '{f.name}' in {where}", hint)
            batch: tuple[str, ...] = ()
            if f.params is not None:
                if spec is not None and not spec.params:
                    self.error(f.name_span, f"field '{f.name}' takes no parameters",
                               "only 'loss(a, b) = ...' names the parts of the batch")
                # Even on a wrong field the parameters are in scope: one error is enough.
                batch = self.check_params(f, problem)
            scope = _Scope(self, batch=batch, problems=True)
            if spec is not None and spec.method:
                for arg in _method_arguments(f.value):  # the method name is not a Python name
                    self.check_names(arg, scope)
            else:
                self.check_names(f.value, scope)
            if spec is not None:
                check_value(spec, f, where, self.lets, self.error)
        for name, spec in table.items():
            if spec.required and name not in seen and name not in guessed:
                self.error(at, f"{where} is missing the required field '{name}'", spec.doc)

    def check_early_stop(self, engine: ir.Engine):
        """``early_stop``'s metric is one that ``validate`` gives, when both are spelled out:
        ``validate = dict(acc=..., loss=...)`` and ``early_stop = dict(metric="acc")``."""
        stop, validate = engine.field("early_stop"), engine.field("validate")
        if stop is None or not isinstance(stop.value, ir.Call):
            return
        metric = next((kw for kw in stop.value.kwargs if kw.name == "metric"), None)
        keys = _dict_keys(validate.value) if validate is not None else None
        if metric is None or keys is None:
            return  # validate is a function call: its keys are checked at the first validation
        name = literal_value(metric.value, self.lets)
        if isinstance(name, str) and name not in keys:
            given = ", ".join(f"'{k}'" for k in keys)
            self.error(metric.value.span, f"'early_stop' watches '{name}', but 'validate' gives "
                       f"only {given}", did_you_mean(name, keys) or f"use one of {given}")

    def check_params(self, f: ir.Field, problem: ir.Problem | None) -> tuple[str, ...]:
        seen: set[str] = set()
        spans = f.param_spans or tuple(f.span for _ in f.params)
        for name, span in zip(f.params, spans):
            if name in seen:
                self.error(span, f"duplicate batch name '{name}'")
            elif name in self.problems:
                self.warning(span, f"batch name '{name}' hides the problem '{name}' "
                             "inside this loss")
            elif _is_dunder(name):
                self.error(span, f"dunder name '{name}' is not allowed")
            seen.add(name)
        return f.params

    # -- the depends graph

    def check_graph(self):
        for cycle, k in back_edges(self.graph):
            upper = cycle[-2]
            edge = self.edges[upper][k]
            self.error(edge.target_span, "depends cycle: " + " -> ".join(cycle),
                       "the depends edges must form a DAG: remove one edge of the cycle")
        lv = levels(self.program)
        for name, p in self.problems.items():
            f = p.field("level")
            if f is None or not lv:
                continue
            v = f.value
            declared = literal_value(v, self.lets)
            if declared is UNKNOWN:
                self.error(v.span, "'level' must be an integer literal")
                continue
            if not isinstance(declared, int) or isinstance(declared, bool):
                continue  # check_value reported it
            if declared >= 0 and declared != lv[name]:
                below = ", ".join(self.graph[name])
                why = (f"'{name}' depends on nothing" if not below else
                       f"it is 1 + the highest level of {below}")
                self.error(v.span, f"problem '{name}' is at level {lv[name]}, not {declared}",
                           why)

    def check_modules(self):
        """Modules that refer to problems must be buildable in some order."""
        refs: dict[str, list[str]] = {}
        spans: dict[tuple[str, str], Span] = {}
        for name, p in self.problems.items():
            f = p.field("module")
            refs[name] = []
            if f is None:
                continue
            for node in ir.iter_expr(f.value):
                if isinstance(node, ir.Name) and node.name in self.problems:
                    if node.name == name:
                        self.error(node.span, f"the module of '{name}' refers to itself")
                    elif node.name not in refs[name]:
                        refs[name].append(node.name)
                        spans[(name, node.name)] = node.span
        for cycle, _ in back_edges(refs):
            self.error(spans[(cycle[-2], cycle[-1])],
                       "modules refer to each other in a cycle: " + " -> ".join(cycle),
                       "a module may use another problem's module only if that one does not "
                       "use it back")

    # -- reads

    def check_reads(self):
        lower_of = self.graph
        upper_of = reverse(self.graph)
        cyclic = bool(back_edges(self.graph))
        below = reachable_all(lower_of)
        above = reachable_all(upper_of)
        reads: dict[str, set[str]] = {}
        # With an edge to an unknown problem (or to itself) the graph is not what the author
        # meant: connectivity errors would only repeat that mistake.
        incomplete = any(e.target not in self.problems or e.target == p.name
                         for p in self.problem_list for e in p.edges)
        for name, p in self.problems.items():
            f = p.field("loss")
            if f is None or f.params is None:
                continue
            reads[name] = loss_reads(p) & self.problems.keys()
            reported: set[str] = set()
            for node in ir.iter_expr(f.value):
                if not isinstance(node, ir.Name) or node.name in f.params:
                    continue
                r = node.name
                if r not in self.problems or r == name or r in reported:
                    continue
                if not incomplete and r not in below[name] and r not in above[name]:
                    reported.add(r)
                    self.error(node.span, f"the loss of '{name}' reads '{r}', which is not "
                               f"connected to '{name}' by depends edges",
                               f"add 'depends {r}' to '{name}' (or 'depends {name}' to '{r}')")
        if cyclic:
            return
        for upper, lowers in self.graph.items():
            for lower, e in zip(lowers, self.edges[upper]):
                if upper in reads and not reads[upper] & ({lower} | below[lower]):
                    self.warning(e.target_span,
                                 f"hypergradient through '{lower}' is zero: the loss of "
                                 f"'{upper}' reads nothing at or below '{lower}'",
                                 f"use '{lower}' in the loss of '{upper}', e.g. '{lower}(x)'")
                if lower in reads and upper not in reads[lower]:
                    self.warn_frozen_zero(upper, lower, e, reads, below)


    def warn_frozen_zero(self, upper: str, lower: str, e, reads, below) -> None:
        """The loss of ``lower`` never reads ``upper``: say whether that makes the hypergradient
        zero exactly, or only under the default (frozen) chain (docs/hypergradients.md)."""
        readers = sorted(b for b in below[lower] if upper in reads.get(b, ()))
        if not readers:  # nothing at or below the lower reads the upper: zero in every mode
            self.warning(e.target_span,
                         f"hypergradient through '{lower}' is zero: neither the loss of "
                         f"'{lower}' nor any level below it reads '{upper}'",
                         f"use '{upper}' in the loss of '{lower}', e.g. '{upper}()'")
            return
        if self.multilevel_mode(upper, e) == "frozen":
            self.warning(e.target_span,
                         f"hypergradient through '{lower}' is zero under the default "
                         f"(frozen) chain: the loss of '{lower}' never reads '{upper}', and "
                         f"'{lower}''s Jacobian holds the levels below it fixed, though "
                         f"{', '.join(repr(r) for r in readers)} read"
                         f"{'s' if len(readers) == 1 else ''} '{upper}'",
                         "let the levels below respond with multilevel=\"exact\" in the "
                         "method, e.g. 'via cg(iterations=10, multilevel=\"exact\")' "
                         "(docs/hypergradients.md, 'What is exact')")

    def edge_method(self, upper: str, e) -> ir.Expr | None:
        """The method expression of edge ``e`` (the ``via``, else the upper's ``hypergrad``,
        else the engine's); None for the default, ``darts()``."""
        method = e.method
        if method is None:
            hg = self.problems[upper].field("hypergrad")
            method = hg.value if hg is not None else None
        if method is None and self.program.engines:
            hg = self.program.engines[0].field("hypergrad")
            method = hg.value if hg is not None else None
        return method

    def method_argument(self, upper: str, e, name: str, default):
        """A keyword argument of edge ``e``'s method: its literal value, ``default`` when it
        is not given, None when it is not a literal."""
        method = self.edge_method(upper, e)
        if not isinstance(method, ir.Call):
            return default
        for kw in method.kwargs:
            if kw.name == name:
                value = literal_value(kw.value, self.lets)
                return None if value is UNKNOWN else value
        return default

    def method_name(self, upper: str, e) -> str | None:
        """The name of edge ``e``'s method (``darts`` by default), None when not a name."""
        method = self.edge_method(upper, e)
        if method is None:
            return "darts"
        func = method.func if isinstance(method, ir.Call) else method
        return func.name if isinstance(func, ir.Name) else None

    def multilevel_mode(self, upper: str, e) -> str | None:
        """The ``multilevel`` argument of the method that carries edge ``e``; None when not a
        literal."""
        value = self.method_argument(upper, e, "multilevel", "frozen")
        return value if isinstance(value, str) else None

    # -- schedules whose hypergradient cannot be computed as written

    def check_nesting(self):
        """``multilevel="exact"`` above an unrolled (or ``reinforce``) level, and a checkpointed
        ``unroll`` under another level's second-order unrolled steps: errors (the runtime
        refuses both too; docs/hypergradients.md, "What is exact")."""
        if back_edges(self.graph):
            return
        below = reachable_all(self.graph)
        above = reachable_all(reverse(self.graph))
        into: dict[str, list[tuple[str, object]]] = {}  # lower -> [(upper, edge)]
        for upper, lowers in self.graph.items():
            for lower, e in zip(lowers, self.edges[upper]):
                into.setdefault(lower, []).append((upper, e))

        def unrolled(name: str, second_order: bool = False) -> bool:
            return any(self.method_name(u, e) == "unroll" and not (
                second_order and self.method_argument(u, e, "first_order", False) is not False)
                for u, e in into.get(name, ()))

        for upper, lowers in self.graph.items():
            for lower, e in zip(lowers, self.edges[upper]):
                if self.multilevel_mode(upper, e) == "exact":
                    for b in sorted(below[lower] - {lower}):
                        for u, eb in into.get(b, ()):
                            method = self.method_name(u, eb)
                            if method in ("unroll", "reinforce"):
                                self.error(e.target_span,
                                           f"multilevel=\"exact\" on '{upper}' -> '{lower}' "
                                           f"needs the levels below '{lower}' to respond "
                                           f"implicitly, but '{u}' -> '{b}' uses {method}()",
                                           f"use cg, neumann, darts or sama into '{b}', or "
                                           "multilevel=\"frozen\"")
                if self.method_name(upper, e) == "unroll" and \
                        self.method_argument(upper, e, "checkpoint", False) is True and \
                        self.method_argument(upper, e, "first_order", False) is False:
                    for a in sorted(above[lower] - {lower}):
                        if unrolled(a, second_order=True):
                            self.error(e.target_span,
                                       f"unroll(checkpoint=True) into '{lower}' cannot be "
                                       f"nested under the unrolled steps of '{a}': the "
                                       f"hypergradient above '{a}' would need a second "
                                       f"derivative through the recomputed steps of '{lower}'",
                                       f"drop checkpoint=True, or unroll '{a}' with "
                                       "first_order=True (or an implicit method)")
                            break


def _dict_keys(expr: ir.Expr) -> list[str] | None:
    """The keys of ``dict(a=..., b=...)`` (a number gives ``metric``); None when unknown."""
    if isinstance(expr, ir.Call) and isinstance(expr.func, ir.Name) and expr.func.name == "dict" \
            and not expr.args:
        return [kw.name for kw in expr.kwargs]
    if isinstance(expr, ir.Constant) and isinstance(expr.value, (int, float)):
        return ["metric"]
    return None


def _method_arguments(expr: ir.Expr) -> list[ir.Expr]:
    """The argument expressions of a method call like ``neumann(iterations=n)``."""
    if isinstance(expr, ir.Call) and isinstance(expr.func, ir.Name):
        return [*expr.args, *(kw.value for kw in expr.kwargs)]
    return []


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class _Scope:
    """The names visible in one expression (LANGUAGE.md section 8)."""

    def __init__(self, checker: _Checker, batch: tuple[str, ...] = (), problems: bool = False,
                 let_index: int | None = None):
        self.c = checker
        self.batch = set(batch)
        self.problems = problems
        lets = checker.let_list
        # A let sees only the lets above it; fields see them all.
        visible = lets if let_index is None else lets[:let_index]
        self.lets = checker.let_names if let_index is None else {let.name for let in visible}
        self.let_index = let_index

    def has(self, name: str) -> bool:
        return (name in self.batch or (self.problems and name in self.c.problems)
                or name in self.lets or name in self.c.imported or name in BUILTINS)

    def candidates(self) -> list[str]:
        names = set(self.batch) | self.lets | set(self.c.imported) | set(BUILTINS)
        if self.problems:
            names |= set(self.c.problems)
        return sorted(names)

    def report_unknown(self, checker: _Checker, node: ir.Name):
        name = node.name
        current = checker.let_list[self.let_index] if self.let_index is not None else None
        if current is not None and name == current.name:
            checker.error(node.span, f"let '{name}' refers to itself")
        elif self.let_index is not None and name in checker.lets:
            line = checker.lets[name].name_span.line
            checker.error(node.span, f"let '{name}' is used before it is defined",
                          f"'{name}' is defined at line {line}; a let sees only the lets "
                          "above it")
        elif name in checker.problems and not self.problems:
            checker.error(node.span, f"problem '{name}' cannot be used here",
                          "problem names are in scope in problem and engine fields only")
        else:
            hint = did_you_mean(name, self.candidates())
            close = hint.split("'")[1] if hint else None
            if close in checker.imported and close not in checker.lets:
                # The import may be the typo (the module has 'name', the import says 'close'):
                # `mlodsl compile` resolves the import to tell; here, name both fixes.
                hint = (f"did you mean '{close}'? (or, if the module defines '{name}', fix the "
                        f"import at line {checker.imported[close].line})")
            if hint is None and name == "torch":
                hint = "add 'import torch'"
            checker.error(node.span, f"unknown name '{name}'", hint)


def check(program: ir.Program) -> list[Diagnostic]:
    """Every error and warning of ``program``, sorted by position (errors first at a tie)."""
    return _Checker(program).run()
