"""The engine: holds the problems and their dependency DAG, and runs the schedule.

Python API (Betty's)::

    engine = Engine(config=EngineConfig(train_iters=5000, valid_step=100),
                    problems=[hpo, classifier],
                    dependencies={"u2l": {hpo: [classifier]}, "l2u": {classifier: [hpo]}})
    engine.run()

``l2u`` edges (lower -> uppers) define the hierarchy: ``{classifier: [hpo]}`` means ``hpo``
depends on ``classifier`` and its gradient includes the hypergradient through it. ``u2l`` edges
say that a lower's loss reads an upper; each must be matched by a path of ``l2u`` edges back.

The overridable steps, in the order :meth:`Engine.run` calls them:

* :meth:`train_step` - one iteration of the schedule (every leaf once, cascading uppers);
* :meth:`validation` - returns a dict of metrics, every ``valid_step`` iterations;
* :meth:`on_iteration_end` - hook after each iteration (logging, checkpoints).

Systems features live in their own modules and meet here: checkpoints and resumption
(:mod:`~mlodsl.runtime.checkpoint`; ``checkpoint_every``, ``resume_from``, SIGINT/SIGTERM),
data parallelism (:mod:`~mlodsl.runtime.distributed`), mixed precision
(:mod:`~mlodsl.runtime.precision`), the progress display (:mod:`~mlodsl.runtime.progress`) and
the run folder (:class:`~mlodsl.runtime.logging.RunWriter`).
"""
from __future__ import annotations

import random
import signal
import threading
import warnings
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import torch

from mlodsl.diagnostics import MLOError
from mlodsl.methods import METHODS
from mlodsl.runtime import checkpoint as ckpt
from mlodsl.runtime import distributed as dist
from mlodsl.runtime.config import EngineConfig
from mlodsl.runtime.consumers import WindowConsumers
from mlodsl.runtime.device import resolve_device
from mlodsl.runtime.functional import (ModuleView, gradient_fingerprint, same_fingerprint,
                                       substitute)
from mlodsl.runtime.logging import MetricsLog, make_sinks
from mlodsl.runtime.precision import Precision
from mlodsl.runtime.progress import make_progress
from mlodsl.runtime.problem import Problem
from mlodsl.runtime.schedule import Schedule, ScheduleEdge
from mlodsl.runtime.stepping import end_unroll_window, take_step

__all__ = ["Engine", "EdgeSpec"]

_RESERVED = set(dir(Problem)) | {"module", "optimizer", "scheduler", "train_data_loader",
                                 "device", "cur_batch", "after_step", "grad_clip"}


def _norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One norm per tensor (a fused kernel): non-finite exactly when an entry is."""
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors]))


class EdgeSpec:
    """How an upper steps over one lower: method name, its arguments, ``every`` and warm-up."""

    __slots__ = ("upper", "lower", "method", "args", "every", "warmup")

    def __init__(self, upper: str, lower: str, method: str = "darts",
                 args: Mapping[str, Any] | None = None, every: int = 1, warmup: int = 0):
        if method not in METHODS:
            raise MLOError(f"edge {upper} -> {lower}: unknown hypergradient method '{method}'")
        self.upper, self.lower, self.method = upper, lower, method
        self.args = METHODS[method].bind(dict(args or {}))
        self.every, self.warmup = int(every), int(warmup)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.upper} -> {self.lower} every {self.every} via {self.method}({args})"


def _edges_from_configs(problems: Mapping[str, Problem], hierarchy: nx.DiGraph) -> list[EdgeSpec]:
    """Method, unroll length and warm-up per edge, from the problems' ``Config`` objects.

    The upper's explicitly set fields win (the seed's reading), then the lower's (Betty 0.2.1's),
    then the defaults.
    """
    edges = []
    for upper, lower in hierarchy.edges:
        uc, lc = problems[upper].config, problems[lower].config

        def pick(field: str):
            if uc.explicitly_set(field):
                return getattr(uc, field), uc
            if lc.explicitly_set(field):
                return getattr(lc, field), lc
            return getattr(uc, field), uc

        method, source = pick("type")
        if problems[lower].iterative and not source.explicitly_set("type"):
            method = "unroll"
        every, _ = pick("unroll_steps")
        warmup, _ = pick("warmup_steps")
        args = source.method_arguments(method)
        for arg in METHODS[method].arguments:  # knobs set on the other config still count
            if arg.config_field and not source.explicitly_set(arg.config_field):
                value, _ = pick(arg.config_field)
                args[arg.name] = value
        edges.append(EdgeSpec(upper, lower, method, args, every, warmup))
    return edges


class Engine:
    """Runs a multilevel program: problems, their dependencies and the schedule.

    Args:
        config: an :class:`EngineConfig` (defaults when None).
        problems: the problems, in the order that breaks scheduling ties.
        dependencies: ``{"l2u": {lower: [uppers]}, "u2l": {upper: [lowers]}}`` (Betty's form;
            problems or their names as keys and items).
        env: accepted for Betty compatibility (reinforcement-learning environments); unused.
        edges: the compiler's route: explicit :class:`EdgeSpec` objects instead of ``Config``
            fields (``dependencies`` may then be None).
    """

    def __init__(self, config: EngineConfig | None = None, problems: Sequence[Problem] = (),
                 dependencies: Mapping[str, Mapping] | None = None, env: Any = None,
                 edges: Iterable[EdgeSpec] | None = None, device: Any = None):
        self.config = config if config is not None else EngineConfig()
        self.env = env
        self.problems: dict[str, Problem] = {}
        for p in problems:
            if not isinstance(p, Problem):
                raise MLOError(f"Engine(problems=...): {p!r} is not a Problem")
            if p.name in self.problems:
                raise MLOError(f"two problems are named '{p.name}'")
            if p.name in _RESERVED:
                raise MLOError(f"a problem may not be named '{p.name}': problems reach each "
                               f"other as attributes, and '{p.name}' is taken")
            self.problems[p.name] = p
        if not self.problems:
            raise MLOError("Engine needs at least one problem")

        hierarchy = self._hierarchy(dependencies or {}, edges)
        if edges is None:
            edge_specs = _edges_from_configs(self.problems, hierarchy)
        else:
            edge_specs = list(edges)
        self.edges: dict[tuple[str, str], EdgeSpec] = {(e.upper, e.lower): e for e in edge_specs}
        self.graph = hierarchy
        self.schedule = Schedule(list(self.problems), [
            ScheduleEdge(e.upper, e.lower, e.every, e.warmup) for e in edge_specs])
        self._below_cache: dict[str, list[str]] = {}
        self._ancestors_cache: dict[tuple[str, frozenset], list[str]] = {}
        self._method_states: dict[tuple[str, str], dict] = {}
        # (problem, wrt) -> whether its gradient slice agreed with the full loss (checked once)
        self._surrogates_ok: dict[tuple[str, tuple[str, ...]], bool] = {}
        self._unrolled = {e.lower for e in edge_specs if e.method == "unroll"} | {
            n for n, p in self.problems.items() if p.iterative and self.schedule.uppers(n)}
        #: Which unrolled windows every problem above them has used (they may then close).
        self.window_consumers = WindowConsumers(
            {n: self.schedule.lowers(n) for n in self.problems}, self._unrolled)
        if self._unrolled:
            from mlodsl.runtime.hypergrad.unroll import check_nesting
            check_nesting(self)
        if any(e.args.get("multilevel") == "exact" for e in edge_specs):
            from mlodsl.runtime.hypergrad.multilevel import check_exact
            check_exact(self)
        self.global_step = 0
        self.history = MetricsLog()
        self._pending_checks: list[tuple[str, str, torch.Tensor]] = []
        self._stop = False
        self._roll_back_cache: dict[str, dict] = {}
        self._es_best: float | None = None
        self._es_bad = 0
        self._resumed = False
        self._interrupt: int | None = None
        self._checkpoint_due = False
        self._last_checkpoint_step: int | None = None
        self._run_started = False
        requested = device if device is not None else getattr(self.config, "device", None)
        self.distributed = dist.wants_distributed(self.config.strategy)
        if self.distributed:
            dist.setup(self.config.backend)
            requested = dist.local_device(requested)
            self.history.console = dist.is_main()  # only rank 0 logs
        self._device = resolve_device(requested)
        for p in self.problems.values():
            p._initialize(self, self._device)
        self.precision = Precision(self)
        if self.distributed:
            dist.broadcast_parameters([p.module for p in self.problems.values()])

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: ``self.classifier`` in validation().
        problems = self.__dict__.get("problems")
        if problems is not None and name in problems:
            return problems[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    # -- structure ---------------------------------------------------------------------------
    def _name_of(self, item: Any, where: str) -> str:
        name = item.name if isinstance(item, Problem) else item
        if not isinstance(name, str) or name not in self.problems:
            raise MLOError(f"dependencies[{where!r}] names {name!r}, which is not in "
                           f"problems ({', '.join(self.problems)})")
        return name

    def _hierarchy(self, dependencies: Mapping[str, Mapping], edges) -> nx.DiGraph:
        unknown = set(dependencies) - {"u2l", "l2u"}
        if unknown:
            raise MLOError(f"dependencies has unknown keys {sorted(unknown)}; use 'u2l' and 'l2u'")
        graph = nx.DiGraph()
        graph.add_nodes_from(self.problems)
        if edges is not None:
            for e in edges:
                for end in (e.upper, e.lower):
                    self._name_of(end, "edges")
                graph.add_edge(e.upper, e.lower)
        for lower, uppers in dependencies.get("l2u", {}).items():
            lo = self._name_of(lower, "l2u")
            for upper in uppers:
                up = self._name_of(upper, "l2u")
                if up == lo:
                    raise MLOError(f"problem '{lo}' depends on itself (l2u edge to itself)")
                graph.add_edge(up, lo)  # upper -> lower: "upper depends on lower"
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            names = [u for u, _ in cycle] + [cycle[0][0]]
            raise MLOError("dependency cycle: " + " depends on ".join(names),
                           hint="the l2u edges must form a DAG (uppers above lowers)")
        for upper, lowers in dependencies.get("u2l", {}).items():
            up = self._name_of(upper, "u2l")
            for lower in lowers:
                lo = self._name_of(lower, "u2l")
                if up == lo:
                    raise MLOError(f"problem '{up}' has a u2l edge to itself")
                if not nx.has_path(graph, up, lo):
                    raise MLOError(
                        f"u2l edge {up} -> {lo} has no l2u path back: '{lo}' is not below "
                        f"'{up}', so '{up}' cannot be differentiated through it",
                        hint=f"add l2u {{{lo}: [{up}]}} or remove the u2l edge")
        return graph

    def descendants_bottom_up(self, name: str) -> list[str]:
        """Problems below ``name`` in the DAG, lowest level first (ties in problem order)."""
        if name not in self._below_cache:
            levels = self.schedule.levels()
            order = list(self.problems)
            below = nx.descendants(self.graph, name)
            self._below_cache[name] = sorted(below, key=lambda n: (levels[n], order.index(n)))
        return self._below_cache[name]

    def ancestors_in(self, name: str, scope: set[str]) -> list[str]:
        """Problems above ``name`` (that depend on it, transitively) within ``scope``."""
        key = (name, frozenset(scope))
        cached = self._ancestors_cache.get(key)
        if cached is None:
            order = list(self.problems)
            cached = self._ancestors_cache[key] = sorted(nx.ancestors(self.graph, name) & scope,
                                                         key=order.index)
        return list(cached)

    def method_for(self, upper: str, lower: str) -> tuple[str, dict]:
        """The method (and arguments) used to push cotangents through ``lower`` for ``upper``.

        The edge ``upper -> lower`` when there is one; otherwise the first edge into ``lower``
        from a problem inside ``upper``'s sub-DAG.
        """
        spec = self.edges.get((upper, lower))
        if spec is None:
            scope = set(nx.descendants(self.graph, upper)) | {upper}
            for u in self.problems:
                if u in scope and (u, lower) in self.edges:
                    spec = self.edges[(u, lower)]
                    break
        return spec.method, spec.args

    def method_state(self, upper: str, lower: str) -> dict:
        """Persistent per-edge state a method may keep (e.g. a reinforce baseline)."""
        return self._method_states.setdefault((upper, lower), {})

    def is_unrolled(self, name: str) -> bool:
        """Whether ``name``'s steps are taken differentiably for an upper to unroll through."""
        return name in self._unrolled

    # -- loss evaluation ---------------------------------------------------------------------
    def evaluate_loss(self, problem: Problem, batch: Any, params: Sequence[torch.Tensor] | None
                      = None, own_step: bool = False, with_metrics: bool = False,
                      grad_wrt: Sequence[str] | None = None, first_order: bool = False,
                      shown: Mapping[str, Sequence[torch.Tensor]] | None = None):
        """``problem``'s loss on ``batch``, optionally at other parameters, functionally.

        Every problem's module sees its current tensors (fast weights while unrolled); with
        ``params`` the problem's own trainable parameters are replaced. Buffers of every module
        are protected, except the problem's own during its own step.

        ``grad_wrt`` (problem names) says that only the loss's gradient with respect to those
        problems' parameters will be used: the problem may then return a cheaper scalar with
        the same gradient there (:meth:`Problem.target_loss`; a compiled loss drops the terms
        that read none of them). Each such surrogate is checked once against the full loss;
        it is differentiated only once. ``first_order``: the loss will not be differentiated
        through its gradient (a compiled program may run a ``torch.compile``d graph).
        ``shown``: tensors other problems are shown instead of their current parameters (by
        problem name; an unrolled step reads copies of parameters that may change in place
        while its window is open, :mod:`mlodsl.runtime.consumers`).
        """
        if grad_wrt is not None:
            def compute(b):
                return self._target_loss(problem, b, tuple(grad_wrt))
        else:
            def compute(b):
                return problem.compute_loss(b, first_order=first_order)
        views = []
        for other in self.problems.values():
            mapping = None
            if other is problem and params is not None:
                mapping = dict(zip(other._trainable_names(), params))
            elif shown and other.name in shown:
                mapping = dict(zip(other._trainable_names(), shown[other.name]))
            elif other._fast is not None:
                mapping = dict(zip(other._trainable_names(), other._fast))
            protect = not (own_step and other is problem) and other._has_buffers()
            if mapping or protect:  # nothing to substitute: no view, no overhead
                views.append((other.module, ModuleView(mapping, protect_buffers=protect)))
        if not views:
            with self.precision.autocast(problem):
                loss, metrics = compute(batch)
        else:
            with substitute(views), self.precision.autocast(problem):
                loss, metrics = compute(batch)
        return (loss, metrics) if with_metrics else loss

    def _target_loss(self, problem: Problem, batch: Any, wrt: tuple[str, ...]):
        """``problem.target_loss``, checked once per ``(problem, wrt)`` against the full loss.

        A surrogate whose gradient disagrees (a module that reads another problem's parameters
        behind the graph's back, say) is never used again; the run goes on with the full loss
        and a warning says why.
        """
        key = (problem.name, wrt)
        verdict = self._surrogates_ok.get(key)
        surrogate = problem.target_loss(batch, wrt) if verdict is not False else None
        if surrogate is None:  # none offered (Python problems), or one that failed its check
            if verdict is None:
                self._surrogates_ok[key] = False
            return problem.compute_loss(batch, first_order=True)
        if verdict is None:  # the first one: compare with the full loss's gradient
            params = [p for name in wrt for p in self.problems[name].current_parameters()]
            mine = gradient_fingerprint(surrogate, params)
            full, metrics = problem.compute_loss(batch, first_order=True)
            verdict = self._surrogates_ok[key] = same_fingerprint(
                gradient_fingerprint(full, params), mine)
            if not verdict:
                warnings.warn(f"the gradient slice of '{problem.name}''s loss for "
                              f"{', '.join(wrt)} disagreed with the full loss; using the full "
                              "loss from now on", RuntimeWarning, stacklevel=2)
                return full, metrics
        return surrogate, {}

    # -- running -----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One iteration: every leaf steps once; uppers step as their quotas fill."""
        for problem in self.problems.values():  # parameters are read afresh once per iteration
            problem.invalidate_parameter_cache()
        for name in self.schedule.iteration():
            problem = self.problems[name]
            self._maybe_cache_for_roll_back(problem)
            take_step(self, problem)
            self._log_problem(problem)
            # A window below closes once every problem above it has differentiated through
            # it, not at its own upper's step (nested unrolling: runtime/consumers.py).
            for lower in self.window_consumers.stepped(name):
                end_unroll_window(self.problems[lower])
            if self.config.roll_back:
                self._roll_back_lowers(name)
        self._check_finite()

    def validation(self) -> dict | None:
        """Override to return validation metrics (a dict of numbers); None skips logging."""
        return None

    def on_iteration_end(self) -> None:
        """Hook called after each iteration (after validation); does nothing by default."""

    def run(self) -> list[dict]:
        """Run until ``train_iters`` iterations; return the metric history (a list of dicts).

        Resumes from ``resume_from`` first when it holds a checkpoint; writes one every
        ``checkpoint_every`` iterations and one at the end; SIGINT/SIGTERM stop the run at the
        end of the current iteration, after a final checkpoint.
        """
        self._start_run()
        self._set_train(True)
        handlers = self._install_signal_handlers()
        progress = self._make_progress()
        try:
            with progress:
                while self.global_step < self.config.train_iters and not self._stop:
                    self.global_step += 1
                    self.train_step()
                    if self.config.valid_step and self.global_step % self.config.valid_step == 0:
                        self._run_validation()
                    self.on_iteration_end()
                    self._end_iteration(progress)
                if progress is not None:
                    progress.update(self, force=True)
            self._final_checkpoint()
        finally:
            self._restore_signal_handlers(handlers)
            self._set_train(True)
        return self.history.records

    def resume(self, directory: str) -> bool:
        """Restore the newest checkpoint in ``directory``; False when there is none.

        Call before :meth:`run`; the run then continues from the checkpoint's iteration.
        """
        self._resumed = ckpt.load_latest(self, directory)
        return self._resumed

    def save_checkpoint(self, directory: str | None = None):
        """Write a checkpoint now (to ``checkpoint_dir`` by default); return its path."""
        path = ckpt.save_checkpoint(self, directory)
        self._last_checkpoint_step = self.global_step
        return path

    # -- run set-up and iteration boundaries --------------------------------------------------
    def _start_run(self) -> None:
        if self._run_started:  # a second run() continues; nothing to set up again
            return
        self._run_started = True
        if self.config.resume_from and not self._resumed:
            self.resume(self.config.resume_from)
        self._seed()
        if dist.is_main():
            for sink in make_sinks(self.config.logger_type, self.config.run_dir, self.history):
                if hasattr(sink, "truncate_after"):
                    # Drop what an interrupted run logged after its last checkpoint.
                    (sink.truncate_after(self.global_step) if self.global_step
                     else sink.clear())
                self.history.sinks.append(sink)

    def _make_progress(self):
        if not self.config.progress or not dist.is_main():
            return _NoProgress()
        return make_progress(self.config.train_iters, self.global_step)

    def _end_iteration(self, progress) -> None:
        """Progress display, periodic checkpoints, and stopping on a signal."""
        progress.update(self)
        every = self.config.checkpoint_every
        if every and self.global_step % every == 0:
            self._checkpoint_due = True
        if self._checkpoint_due and ckpt.can_checkpoint(self):
            self._checkpoint_due = False
            self._check_parameters_finite()
            self.save_checkpoint()
        interrupted = self._interrupt is not None
        if self.distributed:  # a signal may reach only some ranks: agree before stopping
            interrupted = dist.any_flag(interrupted)
        if interrupted:
            signum = self._interrupt or signal.SIGTERM
            self._final_checkpoint()
            self.history.info(f"stopped by signal {signal.Signals(signum).name} after iteration "
                              f"{self.global_step}")
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + int(signum))

    def _final_checkpoint(self) -> None:
        if not self.config.checkpoint_dir or self._last_checkpoint_step == self.global_step:
            return
        if not ckpt.can_checkpoint(self):
            self.history.info(f"no checkpoint at iteration {self.global_step}: inside an "
                              f"unrolled window (the last one is at {self._last_checkpoint_step})")
            return
        self._check_parameters_finite()
        self.save_checkpoint()

    def _check_parameters_finite(self) -> None:
        """Before a checkpoint: every problem's parameters are finite, or the run stops here.

        The per-step guard reads losses and hypergradient-carrying gradients only; this one
        pass over the parameters makes sure no checkpoint ever holds a diverged state.
        """
        if self.config.on_nan != "stop":
            return
        for problem in self.problems.values():
            params = problem.trainable_parameters()
            if params:
                self._pending_checks.append((problem.name, "parameters", _norms(params)))
        self._check_finite()

    def _install_signal_handlers(self) -> dict | None:
        # Only with somewhere to write to, and only from the main thread (Python's rule).
        if not self.config.checkpoint_dir or threading.current_thread() is not threading.main_thread():
            return None
        previous = {}

        def handler(signum, frame):
            if self._interrupt is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self._interrupt = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _restore_signal_handlers(self, previous: dict | None) -> None:
        for sig, old in (previous or {}).items():
            signal.signal(sig, old)

    # -- helpers -----------------------------------------------------------------------------
    def _seed(self) -> None:
        seed = self.config.seed
        if seed is None or self.global_step > 0:
            return
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np
            np.random.seed(seed % 2**32)
        except ImportError:  # pragma: no cover
            pass

    def _set_train(self, mode: bool) -> None:
        for p in self.problems.values():
            p.module.train(mode)

    def _run_validation(self) -> None:
        stats = None
        if dist.is_main():  # only rank 0 validates; the others follow its numbers
            self._set_train(False)
            try:
                with torch.no_grad():
                    stats = self.validation()
            finally:
                self._set_train(True)
            if stats:
                if not isinstance(stats, Mapping):
                    stats = {"metric": stats}
                stats = {k: (v.item() if isinstance(v, torch.Tensor) else v)
                         for k, v in stats.items()}
        if self.distributed:
            stats = dist.broadcast_object(stats)
        if not stats:
            return
        self.history.log_validation(self.global_step, stats)
        self.last_validation = stats
        self._plateau_schedulers(stats)
        if self.config.early_stopping:
            self._early_stopping(stats)

    def _plateau_schedulers(self, stats: dict) -> None:
        """Step every ``ReduceLROnPlateau`` on its metric (``problem.scheduler_metric``)."""
        for p in self.problems.values():
            sched = p.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = p.scheduler_metric or self.config.early_stopping_metric
                if metric not in stats:
                    raise MLOError(
                        f"problem '{p.name}': ReduceLROnPlateau watches '{metric}', but "
                        f"validation() returned only {sorted(stats)}", kind="run",
                        hint=f"set {p.name}.scheduler_metric to one of {sorted(stats)}")
                sched.step(float(stats[metric]))

    def _early_stopping(self, stats: dict) -> None:
        metric = self.config.early_stopping_metric
        if metric not in stats:
            raise MLOError(f"early stopping watches '{metric}', but validation() returned "
                           f"only {sorted(stats)}", kind="run")
        value = float(stats[metric])
        best = self._es_best
        better = best is None or (value < best if self.config.early_stopping_mode == "min"
                                  else value > best)
        if better:
            self._es_best, self._es_bad = value, 0
        else:
            self._es_bad += 1
            if self._es_bad >= self.config.early_stopping_tolerance:
                self.history.info(f"early stopping at iteration {self.global_step}: "
                                  f"'{metric}' has not improved for {self._es_bad} validations")
                self._stop = True

    def _log_problem(self, problem: Problem) -> None:
        every = problem.config.log_step
        if every and every > 0 and problem.count % every == 0:
            self.history.log_problem(self.global_step, problem.name, problem.count,
                                     problem.last_loss, problem.last_metrics)

    # -- divergence guard ----------------------------------------------------------------------
    def watch_finite(self, problem: Problem, loss: torch.Tensor) -> None:
        """Remember a loss to check for NaN/inf at the end of the iteration (one sync).

        With ``on_nan="skip"`` losses are checked before each optimizer step instead
        (:meth:`allow_step`), so nothing is remembered here.
        """
        if self.config.on_nan == "stop":
            self._pending_checks.append((problem.name, "loss", loss.detach()))

    def allow_step(self, problem: Problem, loss: torch.Tensor,
                   grads: Sequence[torch.Tensor]) -> bool:
        """Whether ``problem`` may apply this step's (averaged, unscaled) gradient ``grads``.

        ``on_nan="stop"``: always True; the gradients' finiteness joins the end-of-iteration
        check (no sync here). ``on_nan="skip"``: one host sync; a non-finite loss or gradient
        skips the step (no parameter update, no scheduler step) and logs it.
        """
        stop = self.config.on_nan == "stop"
        scaled = self.precision.scaler(problem) is not None  # the scaler skips inf steps itself
        # With "stop", only gradients with hypergradients in them are read (a pass over every
        # gradient, a few percent of a small step): a leaf's gradient is backpropagation of its
        # own loss, which is checked, and a non-finite gradient from a finite loss shows up as
        # a non-finite loss one step later. Checkpoints are never written from non-finite
        # parameters (_check_parameters_finite).
        read = grads and not scaled and (not stop or self.descendants_bottom_up(problem.name))
        norms = _norms(grads) if read else None
        if stop:
            if norms is not None:
                self._pending_checks.append((problem.name, "gradient", norms))
            return True
        ok = torch.isfinite(loss.detach()).all()
        if norms is not None:
            ok = ok & torch.isfinite(norms).all()
        ok = bool(ok)
        if self.distributed:  # every rank must skip the same steps, or parameters drift apart
            ok = not dist.any_flag(not ok)
        if ok:
            return True
        self.history.info(f"skipped a step of problem '{problem.name}' at iteration "
                          f"{self.global_step}: non-finite loss or gradient "
                          f"({self._methods_of(problem.name)})")
        return False

    def _methods_of(self, name: str) -> str:
        """The hypergradient methods that feed problem ``name``'s gradient, for messages."""
        scope = set(self.descendants_bottom_up(name)) | {name}
        used = [f"{e.upper}->{e.lower} via {e.method}" for e in self.edges.values()
                if e.upper in scope or e.lower == name]
        return "hypergradients: " + ", ".join(used) if used else "plain gradient, no lowers"

    def _check_finite(self) -> None:
        if not self._pending_checks:
            return
        checks, self._pending_checks = self._pending_checks, []
        # One isfinite over everything (one host sync); per-check flags only on failure.
        if len({t.device for _, _, t in checks}) == 1 and bool(
                torch.isfinite(torch.cat([t.reshape(-1) for _, _, t in checks])).all()):
            return
        flags = torch.stack([torch.isfinite(t).all().cpu() for _, _, t in checks])
        if bool(flags.all()):
            return
        name, what = next((n, w) for (n, w, _), ok in zip(checks, flags.tolist()) if not ok)
        where = {"gradient": f"the gradient of problem '{name}' (hypergradients included)",
                 "parameters": f"the parameters of problem '{name}'"}.get(
                     what, f"the loss of problem '{name}'")
        last = (f"; the last good checkpoint is iteration {self._last_checkpoint_step}"
                if self._last_checkpoint_step is not None else "")
        raise MLOError(f"{where} became NaN or infinite at iteration {self.global_step} "
                       f"({self._methods_of(name)}){last}", kind="run",
                       hint="lower the learning rates, clip gradients (grad_clip), use "
                       "on_nan='skip', or check the loss for log(0) and division by zero")

    # -- systems hooks around the optimizer step --------------------------------------------
    def before_optimizer_step(self, problem: Problem) -> None:
        """Called with ``problem``'s total gradient in ``p.grad``, before clipping and the step.

        Averages it across ranks when distributed (hypergradients included: they are part of
        the total gradient) and unscales it when an fp16 gradient scaler is active.
        """
        if self.distributed:
            dist.average_gradients(problem.trainable_parameters())
        self.precision.unscale(problem)

    def average_across_ranks(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Average a differentiable gradient list across ranks (unrolled steps)."""
        if not self.distributed:
            return list(grads)
        return dist.average_differentiable(grads)

    # -- Betty's roll_back -------------------------------------------------------------------
    def _maybe_cache_for_roll_back(self, problem: Problem) -> None:
        if not self.config.roll_back or not self.schedule.uppers(problem.name):
            return
        fresh = all(self.schedule.pending(u)[problem.name] == 0
                    for u in self.schedule.uppers(problem.name))
        if fresh:
            import copy
            self._roll_back_cache[problem.name] = {
                "module": copy.deepcopy(problem.module.state_dict()),
                "optimizer": copy.deepcopy(problem.optimizer.state_dict())}

    def _roll_back_lowers(self, upper: str) -> None:
        """After ``upper`` stepped: each lower returns to where its window started and takes one
        step against the updated upper (Betty's ``roll_back`` warm start)."""
        for lower in self.schedule.lowers(upper):
            cache = self._roll_back_cache.pop(lower, None)
            if cache is None:
                continue
            problem = self.problems[lower]
            problem.module.load_state_dict(cache["module"])
            problem.optimizer.load_state_dict(cache["optimizer"])
            take_step(self, problem, batch=problem.cur_batch)
            problem._count -= 1  # the redo replaces a step, it does not add one


class _NoProgress:
    """The progress display when there is none (``progress=False``, or ranks other than 0)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, engine, force: bool = False) -> None:
        """Do nothing."""
