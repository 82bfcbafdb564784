"""The execution plan: what lowering a ``.mlo`` program produces, and what drives the runtime.

An :class:`ExecutionPlan` holds the compiled problems (runtime ``Problem`` objects whose
``training_step`` calls the loss graph), the edges with their hypergradient methods (and why
each method was chosen), the engine settings and the validation expression. ``plan.run()``
builds one :class:`~mlodsl.runtime.engine.Engine` from them and runs it: there is one runtime,
shared with the Python API. The runtime classes that a compiled program plugs in (its losses,
problems and engine) are in :mod:`mlodsl.compiler.back.adapters`.

Example::

    plan = mlodsl.compile("examples/hpo/hpo.mlo")
    print(plan.describe())
    history = plan.run(iterations=100)
    net = plan.problems["classifier"].module
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from mlodsl.compiler.back.adapters import CompiledProblem, PlanEngine
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.diagnostics import Diagnostic, MLOError
from mlodsl.runtime.config import EngineConfig
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.schedule import Schedule

__all__ = ["ExecutionPlan", "LossInfo"]


# ----------------------------------------------------------------------------- the plan

@dataclass
class LossInfo:
    """How a problem's loss was compiled: an fx graph or a traced callable, and what it reads."""

    kind: str  # "graph" or "callable"
    reads: list[str]
    graph: torch.fx.GraphModule | None = None
    params: tuple[str, ...] = ()
    traced: bool = True  # False when a callable loss could not be traced


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
    edges: list[Edge]  # the runtime's edges; ``source`` says where each method came from
    losses: dict[str, LossInfo]
    engine_settings: dict[str, Any]
    search_path: list[str]
    sources: SourceMap
    validate: Callable[[Mapping[str, Any]], Any] | None = None
    validate_node: Any = None
    warnings: list[Diagnostic] = field(default_factory=list)
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)
    locations: dict[tuple[str, str], str] = field(default_factory=dict)
    engine: PlanEngine | None = None
    early_stop_node: Any = None  # the early_stop field's metric (or value), for messages
    overrides: list[str] = field(default_factory=list)  # as written (for the summary)
    summary: dict | None = None  # the results of the last run() (mlodsl.runtime.summary)
    seconds: float = 0.0  # wall time spent in run(), all calls together

    # -- what it is ---------------------------------------------------------------------------
    def schedule(self) -> Schedule:
        """A fresh :class:`~mlodsl.runtime.schedule.Schedule` of the program."""
        return Schedule(self.order, self.edges)

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
                       "args": e.args, "method_from": e.source,
                       "every_from": e.origins.get("every", "default"), "warmup": e.warmup,
                       "warmup_from": e.origins.get("warm-up", "default"),
                       "args_from": {k: v for k, v in e.origins.items()
                                     if k not in ("every", "warm-up")},
                       **({"note": e.note} if e.note else {})} for e in self.edges],
            "schedule": self.schedule().describe().splitlines(),
            "engine": {k: v for k, v in self.engine_settings.items()},
            "warnings": [d.headline() for d in self.warnings],
            "compiled_iteration": [
                {"piece": v.piece, "compiled": v.compiled, "reason": v.reason or None,
                 "where": v.where} for v in self.capture_verdicts()],
        }
        return out

    def capture_verdicts(self) -> list:
        """Per problem and edge: captured in the compiled iteration (``compile = True``), or
        eager and why (:func:`mlodsl.runtime.compiled.program_reasons`). What only
        torch.compile can find out (an untraceable loss or callback) shows at run time."""
        from types import SimpleNamespace

        from mlodsl.runtime.compiled import program_reasons
        settings = SimpleNamespace(**{"compile": False, **self.engine_settings})
        return program_reasons(self.problems, self.edges, settings,
                               lambda problem, f: self.locations.get((problem, f)))

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
            for key in ("optimizer", "scheduler", "data", "settings"):
                if d.get(key):
                    lines.append(f"  {'':8} {'':<{width}}  {key}: {d[key]}")
        lines += ["", "edges:"]
        if not self.edges:
            lines.append("  (none: a single-level program)")
        for e in self.edges:
            lines.append(f"  {e.upper} depends {e.lower} every {e.every} via {e.call()}"
                         f"   [{e.describe_origins()}{'; ' + e.note if e.note else ''}]")
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
        if self.engine_settings.get("compile"):
            lines += ["", "compiled iteration (compile = True):"]
            lines += ["  " + v.line() for v in self.capture_verdicts()]
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
        from mlodsl.compiler.back.resolve import on_path
        with on_path(self.search_path):
            self.engine = PlanEngine(
                config=config, problems=[self.problems[n] for n in self.order],
                edges=self.edges, validate=self.validate,
                validate_node=self.validate_node, sources=self.sources,
                early_stop_node=self.early_stop_node, locations=self.locations)
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
        from mlodsl.compiler.back.resolve import on_path
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            with on_path(self.search_path):
                engine.run()
                engine.finish()
        except BaseException as err:
            error = err
            raise
        finally:
            self.seconds += time.perf_counter() - start
            self._record_summary(error)
        return engine.history.records

    def _record_summary(self, error: BaseException | None) -> None:
        """Build :attr:`summary` and, with a run folder, write it there, in every ending.

        A failure to write is a warning: it must never hide how the run itself ended.
        """
        from mlodsl.compiler.back.interpret import describe_exception
        from mlodsl.runtime import distributed as dist
        from mlodsl.runtime.summary import build_summary, ending, write_summary

        engine = self.engine
        status, message = ending(engine, error)
        try:
            self.summary = build_summary(
                engine, status=status, message=message, seconds=self.seconds,
                program=self.file if self.file.startswith("<") else os.path.abspath(self.file),
                overrides=self.overrides, run_dir=engine.config.run_dir,
                checkpoints=engine.config.checkpoint_dir)
            if engine.config.run_dir and dist.is_main():
                write_summary(engine.config.run_dir, self.summary)
        except Exception as err:  # noqa: BLE001 - reported, never raised over the run's end
            warnings.warn(f"could not write the run's summary: {describe_exception(err)}",
                          RuntimeWarning, stacklevel=3)

    def final_validation(self) -> dict | None:
        """The last validation metrics of the run, or None."""
        if self.engine is None:
            return None
        last = self.engine.history.validation()
        if not last:
            return None
        return {k: v for k, v in last[-1].items() if k not in ("kind",)}
