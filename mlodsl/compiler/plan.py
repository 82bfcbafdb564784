"""The execution plan: what lowering a ``.mlo`` program produces, and what drives the runtime.

An :class:`ExecutionPlan` holds the compiled problems (runtime ``Problem`` objects whose
``training_step`` calls the loss graph), the edges with their hypergradient methods (and why
each method was chosen), the engine settings and the validation expression. ``plan.run()``
builds one :class:`~mlodsl.runtime.engine.Engine` from them and runs it: there is one runtime,
shared with the Python API.

Example::

    plan = mlodsl.compile("examples/hpo/hpo.mlo")
    print(plan.describe())
    history = plan.run(iterations=100)
    net = plan.problems["classifier"].module
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from mlodsl.compiler import ir
from mlodsl.compiler.fxloss import locate_failure, unpack_batch
from mlodsl.compiler.interpret import SourceMap, describe_exception, user_frame
from mlodsl.compiler.slicing import gradient_slice
from mlodsl.diagnostics import Diagnostic, MLOError
from mlodsl.runtime.config import EngineConfig
from mlodsl.runtime.engine import EdgeSpec, Engine
from mlodsl.runtime.problem import ImplicitProblem
from mlodsl.runtime.schedule import Schedule, ScheduleEdge

__all__ = ["ExecutionPlan", "PlannedEdge", "LossInfo", "CompiledProblem", "GraphLoss",
           "CallableLoss", "PlanEngine"]


# ----------------------------------------------------------------------------- losses

class GraphLoss:
    """A problem's loss from ``loss(a, b) = expr``: unpack the batch, call the fx graph.

    Errors inside the graph are reported at the ``.mlo`` position of the node that failed.
    """

    def __init__(self, problem: str, field_: ir.Field, gm: torch.fx.GraphModule,
                 sources: SourceMap):
        self.problem, self.field, self.gm, self.sources = problem, field_, gm, sources
        self.names = tuple(field_.params or ())
        self._slices: dict[tuple[str, ...], torch.fx.GraphModule | None] = {}
        # torch.compile'd forwards, by graph (the loss graph or one of its slices); a graph
        # that failed to compile maps to None and runs eagerly from then on
        self._compiled: dict[int, Callable | None] = {}

    def slice_for(self, wrt: tuple[str, ...]) -> torch.fx.GraphModule | None:
        """The loss graph's gradient slice for ``wrt`` (cached), or None when nothing drops.

        See :mod:`mlodsl.compiler.slicing`.
        """
        if wrt not in self._slices:
            self._slices[wrt] = gradient_slice(self.gm, wrt)
        return self._slices[wrt]

    def __call__(self, batch: Any, graph: torch.fx.GraphModule | None = None,
                 compiled: bool = False) -> Any:
        """The loss on ``batch`` (``graph``: a slice of the loss graph to run instead).

        ``compiled``: run the graph through ``torch.compile`` (the caller differentiates the
        result only once). A graph that torch cannot compile runs eagerly, after one warning.
        """
        try:
            parts = unpack_batch(batch, self.names)
        except ValueError as err:
            raise self.sources.error(self.field, f"the loss of '{self.problem}': {err}",
                                     kind="run", span=self.field.name_span) from None
        gm = self.gm if graph is None else graph
        if compiled:
            out = self._run_compiled(gm, parts)
            if out is not _NOT_COMPILED:
                return out
        try:
            # forward, not __call__: GraphModule's wrapper prints its own report to stderr.
            return gm.forward(*parts)
        except MLOError:
            raise
        except Exception as err:  # noqa: BLE001 - reported at the .mlo position
            node = locate_failure(gm, err.__traceback__)
            span = node.meta.get("mlo_span") if node is not None else None
            frame = user_frame(err.__traceback__)
            raise self.sources.error(
                self.field.value, f"the loss of '{self.problem}' failed: "
                f"{describe_exception(err)}", f"raised at {frame}" if frame else None,
                kind="run", span=span) from None

    def _run_compiled(self, gm: torch.fx.GraphModule, parts: list) -> Any:
        """``gm.forward(*parts)`` through torch.compile, or ``_NOT_COMPILED``.

        Parameters are graph inputs to torch.compile (its default for built-in modules), so
        the runtime's functional substitution (perturbed copies, fast weights) is seen without
        recompiling. Any failure (no C++ compiler, an operation dynamo cannot trace) is
        reported once and the graph runs eagerly from then on: compiling is a speed-up,
        never a reason for a run to stop.
        """
        key = id(gm)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(gm.forward, dynamic=False)
        fn = self._compiled[key]
        if fn is None:
            return _NOT_COMPILED
        try:
            return fn(*parts)
        except Exception as err:  # noqa: BLE001 - fall back to the eager graph
            self._compiled[key] = None
            warnings.warn(f"torch.compile could not run the loss of '{self.problem}' "
                          f"({describe_exception(err)[:240]}); it runs eagerly",
                          RuntimeWarning, stacklevel=3)
            return _NOT_COMPILED


_NOT_COMPILED = object()


class CallableLoss:
    """A problem's loss from ``loss = f``: ``f(problems, batch)``, ``problems.NAME`` each problem."""

    def __init__(self, problem: str, field_: ir.Field, fn: Callable, problems: Any,
                 sources: SourceMap):
        self.problem, self.field, self.fn, self.problems = problem, field_, fn, problems
        self.sources = sources

    def __call__(self, batch: Any) -> Any:
        try:
            return self.fn(self.problems, batch)
        except MLOError:
            raise
        except Exception as err:  # noqa: BLE001 - reported at the .mlo position
            frame = user_frame(err.__traceback__)
            raise self.sources.error(
                self.field.value, f"the loss of '{self.problem}' failed: "
                f"{describe_exception(err)}", f"raised at {frame}" if frame else None,
                kind="run") from None


class CompiledProblem(ImplicitProblem):
    """A problem of a compiled program: its ``training_step`` is the compiled loss."""

    def __init__(self, *args: Any, loss: Callable[[Any], Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss
        self.grad_accum: int | None = None

    def training_step(self, batch: Any) -> Any:
        """The loss on one batch (the fx graph, or the user's callable)."""
        return self.loss_fn(batch)

    @property
    def compiles(self) -> bool:
        """Whether this problem's first-order loss evaluations go through torch.compile."""
        engine = getattr(self, "_engine", None)
        return bool(engine is not None and engine.config.compile
                    and isinstance(self.loss_fn, GraphLoss))

    def first_order_training_step(self, batch: Any) -> Any:
        """The loss graph through torch.compile when the engine says ``compile = True``."""
        if self.compiles:
            return self.loss_fn(batch, compiled=True)
        return self.loss_fn(batch)

    def target_loss(self, batch: Any, targets: tuple[str, ...]) -> torch.Tensor | None:
        """The loss graph's gradient slice for ``targets`` on ``batch`` (None: no slice).

        A callable loss is opaque: it has none.
        """
        graph = self.loss_fn.slice_for(targets) if isinstance(self.loss_fn, GraphLoss) else None
        if graph is None:
            return None
        out = self.loss_fn(batch, graph, compiled=self.compiles)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            return None  # let the full loss report what is wrong with the output
        return out.reshape(())


# ----------------------------------------------------------------------------- the plan

@dataclass
class PlannedEdge:
    """``upper depends lower``: its ``every``, its method, and where the method came from."""

    upper: str
    lower: str
    every: int
    method: str
    args: dict
    source: str  # "via", "hypergrad of 'P'", "engine hypergrad" or "default"

    def spec(self) -> EdgeSpec:
        """The runtime's edge."""
        return EdgeSpec(self.upper, self.lower, self.method, self.args, self.every)

    def call(self) -> str:
        """``darts(alpha=0.01)``."""
        return f"{self.method}(" + ", ".join(f"{k}={v!r}" for k, v in self.args.items()) + ")"


@dataclass
class LossInfo:
    """How a problem's loss was compiled: an fx graph or a traced callable, and what it reads."""

    kind: str  # "graph" or "callable"
    reads: list[str]
    graph: torch.fx.GraphModule | None = None
    params: tuple[str, ...] = ()
    traced: bool = True  # False when a callable loss could not be traced


class PlanEngine(Engine):
    """The runtime's engine with the program's ``validate`` expression as its validation."""

    def __init__(self, *args: Any, validate: Callable[[Mapping[str, Any]], Any] | None = None,
                 validate_node: Any = None, sources: SourceMap | None = None, **kwargs: Any):
        self._validate_fn = validate
        self._validate_node = validate_node
        self._sources = sources
        super().__init__(*args, **kwargs)

    def validation(self) -> dict | None:
        """The value of ``validate``: a number (logged as ``metric``) or a dict of numbers."""
        if self._validate_fn is None:
            return None
        value = self._validate_fn(self.problems)
        if not isinstance(value, Mapping):
            value = {"metric": value}
        stats = {}
        for k, v in value.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise self._sources.error(
                    self._validate_node, f"'validate' must give a number or a dict of numbers; "
                    f"'{k}' is a {type(v).__name__}", kind="run")
            stats[str(k)] = v
        self._default_metrics(stats)
        return stats

    def _default_metrics(self, stats: dict) -> None:
        """Early stopping and ReduceLROnPlateau watch the only metric when none was named."""
        only = next(iter(stats)) if len(stats) == 1 else None
        named = "early_stopping_metric" in getattr(self.config, "_explicit", ())
        if self.config.early_stopping and not named and only is not None:
            self.config.early_stopping_metric = only
        for p in self.problems.values():
            if isinstance(p.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) \
                    and p.scheduler_metric is None:
                p.scheduler_metric = self.config.early_stopping_metric if \
                    self.config.early_stopping_metric in stats else only

    def finish(self) -> None:
        """Validate once more at the end, unless the last iteration just did."""
        last = self.history.validation()
        if self._validate_fn is None or (last and last[-1]["iteration"] == self.global_step):
            return
        self._run_validation()


@dataclass
class ExecutionPlan:
    """A compiled program: problems, edges, schedule, losses and engine settings.

    ``problems`` are in level order (then source order); the engine receives them in source
    order, which breaks the schedule's ties (LANGUAGE.md section 4).
    """

    file: str
    problems: dict[str, CompiledProblem]
    order: list[str]
    levels: dict[str, int]
    edges: list[PlannedEdge]
    losses: dict[str, LossInfo]
    engine_settings: dict[str, Any]
    search_path: list[str]
    sources: SourceMap
    validate: Callable[[Mapping[str, Any]], Any] | None = None
    validate_node: Any = None
    warnings: list[Diagnostic] = field(default_factory=list)
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)
    engine: PlanEngine | None = None

    # -- what it is ---------------------------------------------------------------------------
    def schedule(self) -> Schedule:
        """A fresh :class:`~mlodsl.runtime.schedule.Schedule` of the program."""
        return Schedule(self.order, [ScheduleEdge(e.upper, e.lower, e.every) for e in self.edges])

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter count of each problem."""
        return {n: sum(q.numel() for q in p.module.parameters() if q.requires_grad)
                for n, p in self.problems.items()}

    def to_json(self, show_graphs: bool = False) -> dict:
        """The plan as plain data (``mlodsl compile --json``)."""
        counts = self.parameter_counts()
        out = {
            "file": self.file,
            "problems": [{
                "name": n, "level": self.levels[n], "parameters": counts[n],
                **self.descriptions.get(n, {}),
                "loss": {"kind": self.losses[n].kind, "reads": self.losses[n].reads,
                         "batch": list(self.losses[n].params),
                         **({"code": self.losses[n].graph.code}
                            if show_graphs and self.losses[n].graph is not None else {})},
            } for n in self.problems],
            "edges": [{"upper": e.upper, "lower": e.lower, "every": e.every, "method": e.method,
                       "args": e.args, "method_from": e.source} for e in self.edges],
            "schedule": self.schedule().describe().splitlines(),
            "engine": {k: v for k, v in self.engine_settings.items()},
            "warnings": [d.headline() for d in self.warnings],
        }
        return out

    def describe(self, show_graphs: bool = False) -> str:
        """A human-readable account of the plan (``mlodsl compile``)."""
        counts = self.parameter_counts()
        depth = max(self.levels.values()) + 1
        lines = [f"{self.file}: {len(self.problems)} problem"
                 f"{'s' if len(self.problems) != 1 else ''}, {depth} level"
                 f"{'s' if depth != 1 else ''}", "", "problems (level order):"]
        width = max(len(n) for n in self.problems)
        for n in self.problems:
            d = self.descriptions.get(n, {})
            lines.append(f"  level {self.levels[n]}  {n:<{width}}  {counts[n]:>10,} parameters  "
                         f"module {d.get('module', '?')}")
            for key in ("optimizer", "scheduler", "data"):
                if d.get(key):
                    lines.append(f"  {'':8} {'':<{width}}  {key}: {d[key]}")
        lines += ["", "edges:"]
        if not self.edges:
            lines.append("  (none: a single-level program)")
        for e in self.edges:
            lines.append(f"  {e.upper} depends {e.lower} every {e.every} via {e.call()}"
                         f"   [method from {e.source}]")
        lines += ["", "schedule:"] + ["  " + s for s in self.schedule().describe().splitlines()]
        lines += ["", "losses:"]
        for n, info in self.losses.items():
            head = f"loss({', '.join(info.params)})" if info.kind == "graph" else "loss = callable"
            reads = ", ".join(info.reads) if info.reads else "nothing"
            note = "" if info.traced else " (not traced: reads unchecked)"
            lines.append(f"  {n:<{width}}  {head}: reads {reads}{note}")
            if show_graphs and info.graph is not None:
                lines += ["    " + s for s in info.graph.code.strip().splitlines()]
        lines += ["", "engine:"]
        for k, v in self.engine_settings.items():
            lines.append(f"  {k} = {v!r}")
        return "\n".join(lines)

    # -- running ---------------------------------------------------------------------------------
    def build_engine(self, *, run_dir: str | None = None, resume: str | None = None,
                     checkpoint_dir: str | None = None, progress: bool = False,
                     console: bool = True) -> PlanEngine:
        """Build the runtime engine (once); later calls return the same engine."""
        if self.engine is not None:
            return self.engine
        settings = dict(self.engine_settings)
        # checkpoint_every without a folder: the engine puts checkpoints under run_dir, or
        # says (when the run starts) that it needs one.
        config = EngineConfig(**settings, run_dir=run_dir, resume_from=resume,
                              checkpoint_dir=checkpoint_dir, progress=progress)
        from mlodsl.compiler.resolve import on_path
        with on_path(self.search_path):
            self.engine = PlanEngine(
                config=config, problems=[self.problems[n] for n in self.order],
                edges=[e.spec() for e in self.edges], validate=self.validate,
                validate_node=self.validate_node, sources=self.sources)
        self.engine.history.console = console
        for n, info in self.losses.items():  # tensor constants of the graphs, too
            if info.graph is not None:
                info.graph.to(next(self.problems[n].module.parameters()).device)
        return self.engine

    def run(self, iterations: int | None = None, **engine_options: Any) -> list[dict]:
        """Train until ``iterations`` engine iterations in all (default: the program's).

        Returns the metric history (a list of dicts). Keyword options go to
        :meth:`build_engine` on the first call (``run_dir``, ``resume``, ``progress``,
        ``console``). A later call with a larger ``iterations`` continues the same run.
        """
        engine = self.build_engine(**engine_options)
        if iterations is not None:
            if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
                raise MLOError(f"iterations must be an integer >= 0, got {iterations!r}")
            engine.config.train_iters = iterations
        from mlodsl.compiler.resolve import on_path
        with on_path(self.search_path):
            engine.run()
            engine.finish()
        return engine.history.records

    def final_validation(self) -> dict | None:
        """The last validation metrics of the run, or None."""
        if self.engine is None:
            return None
        last = self.engine.history.validation()
        if not last:
            return None
        return {k: v for k, v in last[-1].items() if k not in ("kind",)}
