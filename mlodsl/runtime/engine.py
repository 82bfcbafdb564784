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

import signal
import threading
from typing import Any, Iterable, Mapping, Sequence

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import checkpoint as ckpt
from mlodsl.runtime import distributed as dist
from mlodsl.runtime.config import EngineConfig
from mlodsl.runtime.consumers import WindowConsumers
from mlodsl.runtime.data import to_device
from mlodsl.runtime.device import resolve_device
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.evaluation import LossEvaluator
from mlodsl.runtime.guard import DivergenceGuard
from mlodsl.runtime.hierarchy import Hierarchy, build_graph, edges_from_configs
from mlodsl.runtime.logging import MetricsLog, make_sinks
from mlodsl.runtime.precision import Precision
from mlodsl.runtime.progress import make_progress
from mlodsl.runtime.problem import Problem
from mlodsl.runtime.rollback import RollBack
from mlodsl.runtime.schedule import Schedule
from mlodsl.runtime.seeding import rng_state, seed_everything, set_rng_state
from mlodsl.runtime.state import TrainingState
from mlodsl.runtime.stepping import end_unroll_window, take_step
from mlodsl.runtime.validation import (EarlyStopping, set_train_mode, step_plateau_schedulers,
                                       validate)

__all__ = ["Engine"]

_RESERVED = set(dir(Problem)) | {"module", "optimizer", "scheduler", "train_data_loader",
                                 "device", "cur_batch", "after_step", "grad_clip", "grad_accum"}


class Engine:
    """Runs a multilevel program: problems, their dependencies and the schedule.

    Args:
        config: an :class:`EngineConfig` (defaults when None).
        problems: the problems, in the order that breaks scheduling ties.
        dependencies: ``{"l2u": {lower: [uppers]}, "u2l": {upper: [lowers]}}`` (Betty's form;
            problems or their names as keys and items).
        env: accepted for Betty compatibility (reinforcement-learning environments); unused.
        edges: the compiler's route: explicit :class:`~mlodsl.runtime.edges.Edge` objects
            instead of ``Config`` fields (``dependencies`` may then be None).
        device: where the problems run (default: ``EngineConfig.device``, else the best
            available).

    The engine keeps the run loop and delegates each other job to a part of its own:
    :class:`~mlodsl.runtime.hierarchy.Hierarchy` (the DAG and its edges),
    :class:`~mlodsl.runtime.evaluation.LossEvaluator` (losses with parameter substitution),
    :class:`~mlodsl.runtime.guard.DivergenceGuard` (``on_nan``),
    :mod:`~mlodsl.runtime.validation` (validation, early stopping),
    :class:`~mlodsl.runtime.rollback.RollBack`, :mod:`~mlodsl.runtime.seeding`,
    :mod:`~mlodsl.runtime.checkpoint` and :mod:`~mlodsl.runtime.stepping` (one step of one
    problem). :meth:`training_state` gathers the whole state
    (:class:`~mlodsl.runtime.state.TrainingState`).
    """

    def __init__(self, config: EngineConfig | None = None, problems: Sequence[Problem] = (),
                 dependencies: Mapping[str, Mapping] | None = None, env: Any = None,
                 edges: Iterable[Edge] | None = None, device: Any = None):
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

        graph = build_graph(self.problems, dependencies or {}, edges)
        edges = edges_from_configs(self.problems, graph) if edges is None else list(edges)
        self.schedule = Schedule(list(self.problems), edges)
        self._hierarchy = Hierarchy(self.problems, graph, edges, self.schedule)
        self._method_states: dict[tuple[str, str], dict] = {}
        #: Which unrolled windows every problem above them has used (they may then close).
        self.window_consumers = WindowConsumers(
            {n: self.schedule.lowers(n) for n in self.problems}, self._hierarchy.unrolled)
        if self._hierarchy.unrolled:
            from mlodsl.runtime.hypergrad.unroll import check_nesting
            check_nesting(self)
        if any(e.args.get("multilevel") == "exact" for e in edges):
            from mlodsl.runtime.hypergrad.multilevel import check_exact
            check_exact(self)
        self.global_step = 0
        self.history = MetricsLog()
        self._guard = DivergenceGuard(self, self._hierarchy)
        self._stop = False
        self._roll_back = RollBack(self.schedule)
        self._early_stopping = EarlyStopping(self.config)
        self._resumed = False
        self._interrupt: int | None = None
        self._checkpoint_due = False
        #: The iteration of the last checkpoint written (None before the first).
        self.last_checkpoint_step: int | None = None
        self._run_started = False
        requested = device if device is not None else getattr(self.config, "device", None)
        self.distributed = dist.wants_distributed(self.config.strategy)
        if self.distributed:
            dist.setup(self.config.backend)
            requested = dist.local_device(requested)
            self.history.console = dist.is_main()  # only rank 0 logs
        self._device = resolve_device(requested)
        for p in self.problems.values():
            p.attach_engine(self, self._device)
        self.precision = Precision(self)
        self._evaluate = LossEvaluator(self.problems, self.precision)
        if self.distributed:  # every rank starts from rank 0's parameters and buffers
            dist.broadcast_tensors(self.training_state().module_tensors())

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: ``self.classifier`` in validation().
        problems = self.__dict__.get("problems")
        if problems is not None and name in problems:
            return problems[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    # -- structure (answered by the hierarchy) -------------------------------------------------
    @property
    def edges(self) -> dict[tuple[str, str], Edge]:
        """The edges by ``(upper, lower)``."""
        return self._hierarchy.edges

    @property
    def graph(self):
        """The dependency DAG (a networkx ``DiGraph``, an edge ``upper -> lower``)."""
        return self._hierarchy.graph

    def descendants_bottom_up(self, name: str) -> list[str]:
        """Problems below ``name`` in the DAG, lowest level first (ties in problem order)."""
        return self._hierarchy.descendants_bottom_up(name)

    def ancestors_in(self, name: str, scope: set[str]) -> list[str]:
        """Problems above ``name`` (that depend on it, transitively) within ``scope``."""
        return self._hierarchy.ancestors_in(name, scope)

    def method_for(self, upper: str, lower: str) -> tuple[str, dict]:
        """The method (and arguments) used to push cotangents through ``lower`` for ``upper``.

        The edge ``upper -> lower`` when there is one; otherwise the first edge into ``lower``
        from a problem inside ``upper``'s sub-DAG.
        """
        edge = self._hierarchy.edge_for(upper, lower)
        return edge.method, edge.args

    def edge_label(self, upper: str, lower: str) -> str:
        """Where the edge :meth:`method_for` uses is written (``FILE:LINE:COL``), for messages;
        ``edge 'upper' -> 'lower'`` for a program built in Python."""
        edge = self._hierarchy.edge_for(upper, lower)
        return edge.where or f"edge '{edge.upper}' -> '{edge.lower}'"

    def is_unrolled(self, name: str) -> bool:
        """Whether ``name``'s steps are taken differentiably for an upper to unroll through."""
        return self._hierarchy.is_unrolled(name)

    def unroll_settings(self, name: str) -> tuple[bool, bool]:
        """``(first_order, checkpoint)`` of ``name``'s differentiable steps (its unroll edges)."""
        return self._hierarchy.unroll_settings(name)

    def window_length(self, name: str) -> int:
        """Differentiable steps in one unrolled window of ``name``: the longest ``every``."""
        return self._hierarchy.window_length(name)

    def method_state(self, upper: str, lower: str) -> dict:
        """Persistent per-edge state a method may keep (e.g. a reinforce baseline)."""
        return self._method_states.setdefault((upper, lower), {})

    # -- loss evaluation -------------------------------------------------------------------
    def evaluate_loss(self, problem: Problem, batch: Any, params: Sequence[torch.Tensor] | None
                      = None, own_step: bool = False, with_metrics: bool = False,
                      grad_wrt: Sequence[str] | None = None, first_order: bool = False,
                      shown: Mapping[str, Sequence[torch.Tensor]] | None = None):
        """``problem``'s loss on ``batch``, optionally at other parameters, functionally.

        Every problem's module sees its current tensors (fast weights while unrolled); with
        ``params`` the problem's own trainable parameters are replaced. Buffers of every module
        are protected, except the problem's own during its own step (``own_step``).

        ``grad_wrt`` (problem names) says that only the loss's gradient with respect to those
        problems' parameters will be used: the problem may then return a cheaper scalar with
        the same gradient there (:meth:`Problem.target_loss`; a compiled loss drops the terms
        that read none of them). Each such surrogate is checked once against the full loss;
        it is differentiated only once. ``first_order``: the loss will not be differentiated
        through its gradient (a compiled program may run a ``torch.compile``d graph).
        ``shown``: tensors other problems are shown instead of their current parameters (by
        problem name; an unrolled step reads copies of parameters that may change in place
        while its window is open, :mod:`mlodsl.runtime.consumers`).
        See :class:`~mlodsl.runtime.evaluation.LossEvaluator`.
        """
        return self._evaluate(problem, batch, params=params, own_step=own_step,
                              with_metrics=with_metrics, grad_wrt=grad_wrt,
                              first_order=first_order, shown=shown)

    # -- running -----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One iteration: every leaf steps once; uppers step as their quotas fill."""
        for problem in self.problems.values():  # parameters are read afresh once per iteration
            problem.invalidate_parameter_cache()
        for name in self.schedule.iteration():
            problem = self.problems[name]
            if self.config.roll_back:
                self._roll_back.before_step(problem)
            take_step(self, problem)
            self._log_problem(problem)
            # A window below closes once every problem above it has differentiated through
            # it, not at its own upper's step (nested unrolling: runtime/consumers.py).
            for lower in self.window_consumers.stepped(name):
                end_unroll_window(self.problems[lower])
            if self.config.roll_back:
                self._roll_back.after_upper(name, self.problems,
                                            lambda p: take_step(self, p, batch=p.cur_batch))
        self._guard.check()

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
        self.last_checkpoint_step = self.global_step
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
            self._guard.check_parameters()
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
        if not self.config.checkpoint_dir or self.last_checkpoint_step == self.global_step:
            return
        if not ckpt.can_checkpoint(self):
            self.history.info(f"no checkpoint at iteration {self.global_step}: inside an "
                              f"unrolled window (the last one is at {self.last_checkpoint_step})")
            return
        self._guard.check_parameters()
        self.save_checkpoint()

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
        """Seed every generator before a fresh run (``EngineConfig.seed``)."""
        if self.config.seed is not None and self.global_step == 0:
            seed_everything(self.config.seed)

    def _set_train(self, mode: bool) -> None:
        set_train_mode(self.problems, mode)

    def _run_validation(self) -> None:
        stats = validate(self)
        if not stats:
            return
        self.history.log_validation(self.global_step, stats)
        self.last_validation = stats
        step_plateau_schedulers(self.problems, stats, self.config.early_stopping_metric)
        if self.config.early_stopping and self._early_stopping.update(stats):
            self.history.info(f"early stopping at iteration {self.global_step}: "
                              f"'{self._early_stopping.metric}' has not improved for "
                              f"{self._early_stopping.bad} validations")
            self._stop = True

    def _log_problem(self, problem: Problem) -> None:
        every = problem.config.log_step
        if every and every > 0 and problem.count % every == 0:
            self.history.log_problem(self.global_step, problem.name, problem.count,
                                     problem.last_loss, problem.last_metrics)

    # -- divergence guard (runtime/guard.py) -----------------------------------------------------
    def watch_finite(self, problem: Problem, loss: torch.Tensor) -> None:
        """Remember a loss to check for NaN/inf at the end of the iteration (one sync).

        With ``on_nan="skip"`` losses are checked before each optimizer step instead
        (:meth:`allow_step`), so nothing is remembered here.
        """
        self._guard.watch_loss(problem, loss)

    def allow_step(self, problem: Problem, loss: torch.Tensor,
                   grads: Sequence[torch.Tensor]) -> bool:
        """Whether ``problem`` may apply this step's (averaged, unscaled) gradient ``grads``
        (see :class:`~mlodsl.runtime.guard.DivergenceGuard`)."""
        return self._guard.allow_step(problem, loss, grads)

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

    # -- the training state --------------------------------------------------------------------
    def training_state(self) -> TrainingState:
        """The whole training state, gathered from its owners (live references, no copies).

        See :mod:`mlodsl.runtime.state` for its parts and their owners.
        """
        return TrainingState(
            global_step=self.global_step,
            problems={n: p.training_state() for n, p in self.problems.items()},
            schedule=self.schedule.state_dict(), precision=self.precision.state_dict(),
            early_stopping=self._early_stopping.state_dict(),
            method_states=dict(self._method_states), roll_back=self._roll_back.state_dict(),
            history=self.history.records, rng=rng_state())

    def load_training_state(self, state: TrainingState) -> None:
        """Give every part of ``state`` back to its owner (values copied into live tensors).

        Data positions are restored before the random state: replaying an epoch's shuffle
        moves torch's generator. Per-edge method tensors go to their lower's device.
        """
        missing = set(self.problems) - set(state.problems)
        if missing:
            raise MLOError("the checkpoint does not match this program: it has no state for "
                           f"problem(s) {', '.join(sorted(missing))}", kind="run")
        for name, p in self.problems.items():
            p.load_training_state(state.problems[name], data=False)
        self.global_step = int(state.global_step)
        self.schedule.load_state_dict(state.schedule)
        self.precision.load_state_dict(state.precision)
        self._early_stopping.load_state_dict(state.early_stopping)
        self._method_states = {(u, l): to_device(s, self.problems[l].device)
                               if l in self.problems else s
                               for (u, l), s in state.method_states.items()}
        self._roll_back.load_state_dict(state.roll_back)
        if state.history is not self.history.records:
            self.history.records[:] = list(state.history)
        for name, p in self.problems.items():
            p.load_data_state(state.problems[name].data)
        set_rng_state(state.rng)


class _NoProgress:
    """The progress display when there is none (``progress=False``, or ranks other than 0)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, engine, force: bool = False) -> None:
        """Do nothing."""
