"""What a compiled program plugs into the runtime: its losses, problems and engine.

* :class:`GraphLoss` - a loss from ``loss(a, b) = expr``: unpacks the batch and calls the fx
  graph (or one of its gradient slices), reporting failures at ``.mlo`` positions;
* :class:`CallableLoss` - a loss from ``loss = f``: calls ``f(problems, batch)``;
* :class:`CompiledProblem` - a runtime problem whose ``training_step`` is one of those losses;
* :class:`PlanEngine` - the runtime engine with the program's ``validate`` expression.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch

from mlodsl.compiler import ir
from mlodsl.compiler.back.interpret import describe_exception, user_frame
from mlodsl.compiler.back.loss_graph import locate_failure, unpack_batch
from mlodsl.compiler.back.slicing import gradient_slice
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.diagnostics import MLOError
from mlodsl.runtime.engine import Engine
from mlodsl.runtime.problem import ImplicitProblem

__all__ = ["GraphLoss", "CallableLoss", "CompiledProblem", "PlanEngine"]


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

        See :mod:`mlodsl.compiler.back.slicing`.
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
            raise _loss_failed(self, err, span) from None

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
    """A problem's loss from ``loss = f``: ``f(problems, batch)``, ``problems.NAME`` each
    problem."""

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
            raise _loss_failed(self, err) from None


def _loss_failed(loss: GraphLoss | CallableLoss, err: Exception, span=None) -> MLOError:
    """The run-time error for a loss that raised ``err``: at the loss's ``.mlo`` position
    (``span``: the failing graph node's, when known), with the user's frame that raised."""
    frame = user_frame(err.__traceback__)
    return loss.sources.error(
        loss.field.value, f"the loss of '{loss.problem}' failed: {describe_exception(err)}",
        f"raised at {frame}" if frame else None, kind="run", span=span)


class CompiledProblem(ImplicitProblem):
    """A problem of a compiled program: its ``training_step`` is the compiled loss."""

    def __init__(self, *args: Any, loss: Callable[[Any], Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss

    def training_step(self, batch: Any) -> Any:
        """The loss on one batch (the fx graph, or the user's callable)."""
        return self._one_number(self.loss_fn(batch))

    def _one_number(self, out: Any) -> Any:
        """``out`` when the loss is one number (or a dict with one under 'loss'); else an error
        at the ``loss`` field, in the language's words (a loss with ``reduction="none"``
        gives one number per example)."""
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            return out
        fn = self.loss_fn
        if isinstance(loss, torch.Tensor):
            got = f"a tensor of shape {list(loss.shape)}"
            hint = ("reduce it to one number: .mean() or .sum() around it, or "
                    "reduction=\"mean\" (reduction=\"none\" keeps one loss per example)")
        else:
            got = "nothing under 'loss'" if isinstance(out, Mapping) else type(loss).__name__
            hint = "the loss expression must give one number (a one-element tensor)"
        raise fn.sources.error(fn.field.value, f"the loss of '{self.name}' must be one number, "
                               f"but it gives {got}", hint, kind="run")

    @property
    def compiles(self) -> bool:
        """Whether this problem's first-order loss evaluations go through torch.compile."""
        engine = self.engine
        return bool(engine is not None and isinstance(self.loss_fn, GraphLoss)
                    and engine.compiles_loss_evaluations())

    def first_order_training_step(self, batch: Any) -> Any:
        """The loss graph through torch.compile when the engine says ``compile = True``."""
        if self.compiles:
            return self._one_number(self.loss_fn(batch, compiled=True))
        return self._one_number(self.loss_fn(batch))

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


class PlanEngine(Engine):
    """The runtime's engine with the program's ``validate`` expression as its validation."""

    def __init__(self, *args: Any, validate: Callable[[Mapping[str, Any]], Any] | None = None,
                 validate_node: Any = None, sources: SourceMap | None = None,
                 early_stop_node: Any = None,
                 locations: Mapping[tuple[str, str], str] | None = None, **kwargs: Any):
        self._validate_fn = validate
        self._locations = dict(locations or {})
        self._validate_node = validate_node
        self._early_stop_node = early_stop_node
        self._sources = sources
        super().__init__(*args, **kwargs)

    def field_location(self, problem: str, field: str) -> str | None:
        """``FILE:LINE:COL`` of a problem's field (``"edge:LOWER"``: its edge), or None."""
        return self._locations.get((problem, field))

    def validation(self) -> dict | None:
        """The value of ``validate``: a number (logged as ``metric``) or a dict of numbers."""
        if self._validate_fn is None:
            return None
        with torch.no_grad():  # an expression evaluates; a function that trains enables grad
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
        self._check_early_stop_metric(stats)
        return stats

    def _check_early_stop_metric(self, stats: dict) -> None:
        """The metric ``early_stop`` watches is one that ``validate`` gives, or an error at the
        ``early_stop`` field (the checker catches this before running when ``validate`` is a
        ``dict(...)``; a function's keys are known only now)."""
        metric = self.config.early_stopping_metric
        if not self.config.early_stopping or metric in stats or self._early_stop_node is None:
            return
        from mlodsl.diagnostics import did_you_mean
        named = self.config.explicitly_set("early_stopping_metric")
        given = ", ".join(f"'{k}'" for k in stats)
        if named:
            message = f"'early_stop' watches '{metric}', but 'validate' gives only {given}"
            hint = did_you_mean(metric, stats) or f"use one of {given}"
        else:
            message = f"'early_stop' names no metric, and 'validate' gives several: {given}"
            hint = f"name one: early_stop = dict(metric=\"{next(iter(stats))}\", ...)"
        raise self._sources.error(self._early_stop_node, message, hint, kind="run")

    def _default_metrics(self, stats: dict) -> None:
        """Early stopping and ReduceLROnPlateau watch the only metric when none was named."""
        only = next(iter(stats)) if len(stats) == 1 else None
        named = self.config.explicitly_set("early_stopping_metric")
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
