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

import os
import signal
import threading
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
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
from mlodsl.runtime.problem_list import ProblemList
from mlodsl.runtime.rollback import RollBack
from mlodsl.runtime.run_folder import check_writable
from mlodsl.runtime.schedule import Schedule
from mlodsl.runtime.seeding import rng_state, seed_everything, set_rng_state
from mlodsl.runtime.state import TrainingState
from mlodsl.runtime.stepping import end_unroll_window, take_step
from mlodsl.runtime.validation import (EarlyStopping, set_train_mode, step_plateau_schedulers,
                                       validate)

__all__ = ["Engine"]

_RESERVED = set(dir(Problem)) | {"module", "optimizer", "scheduler", "train_data_loader",
                                 "device", "cur_batch", "after_step", "grad_clip", "grad_accum",
                                 "env", "cfg"}


def _with_declared_relations(dependencies: Mapping, problems) -> Mapping:
    """``dependencies`` plus the l2u edges declared with ``add_parent``/``add_child``."""
    declared = any(p.declared_parents() or p.declared_children() for p in problems)
    if not declared or not isinstance(dependencies, Mapping) or not isinstance(
            dependencies.get("l2u", {}), Mapping):
        return dependencies  # nothing to add (build_graph reports a malformed argument)
    out = dict(dependencies)
    l2u = out["l2u"] = dict(out.get("l2u", {}))
    for p in problems:
        for upper in p.declared_parents():
            l2u[p] = list(l2u.get(p, [])) + [upper]
        for lower in p.declared_children():
            l2u[lower] = list(l2u.get(lower, [])) + [p]
    return out


class Engine:
    """Runs a multilevel program: problems, their dependencies and the schedule.

    Args (Betty's order, ``Engine(problems, config, dependencies, env)``; the older
    ``Engine(config, problems, ...)`` order is recognized by the arguments' types):
        problems: the problems, in the order that breaks scheduling ties. ``engine.problems``
            is this list (a :class:`~mlodsl.runtime.problem_list.ProblemList`, which also
            looks problems up by name).
        config: an :class:`EngineConfig` (defaults when None).
        dependencies: ``{"l2u": {lower: [uppers]}, "u2l": {upper: [lowers]}}`` (Betty's form;
            problems or their names as keys and items). Relations declared with
            :meth:`Problem.add_parent`/:meth:`Problem.add_child` before the engine is built
            count as ``l2u`` edges too.
        env: an environment (:class:`mlodsl.envs.Env`) shared by the problems as ``self.env``.
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

    def __init__(self, problems: Sequence[Problem] = (), config: EngineConfig | None = None,
                 dependencies: Mapping[str, Mapping] | None = None, env: Any = None,
                 edges: Iterable[Edge] | None = None, device: Any = None):
        if isinstance(problems, EngineConfig) or (
                config is not None and not isinstance(config, EngineConfig)):
            problems, config = config, problems  # Engine(config, problems, ...)
        self.config = config if config is not None else EngineConfig()
        if not isinstance(self.config, EngineConfig):
            raise MLOError(f"Engine(config=...) must be an EngineConfig, got "
                           f"{type(self.config).__name__}")
        self.env = env
        self.problems = ProblemList()
        for p in problems if problems is not None else ():
            if not isinstance(p, Problem):
                raise MLOError(f"Engine(problems=...): {p!r} is not a Problem")
            if p.name in self.problems:
                raise MLOError(f"two problems are named '{p.name}'")
            if p.name in _RESERVED:
                raise MLOError(f"a problem may not be named '{p.name}': problems reach each "
                               f"other as attributes, and '{p.name}' is taken")
            self.problems.append(p)
        if not self.problems:
            raise MLOError("Engine needs at least one problem")

        by_name = dict(self.problems.items())
        dependencies = _with_declared_relations(dependencies or {}, self.problems)
        self.dependencies = dependencies  # Betty's attribute: what the program declared
        graph = build_graph(by_name, dependencies, edges)
        edges = edges_from_configs(by_name, graph) if edges is None else list(edges)
        self.schedule = Schedule(self.problems.keys(), edges)
        self._hierarchy = Hierarchy(by_name, graph, edges, self.schedule)
        self._method_states: dict[tuple[str, str], dict] = {}
        #: Which unrolled windows every problem above them has used (they may then close).
        self.window_consumers = WindowConsumers(
            {n: self.schedule.lowers(n) for n in self.problems.keys()}, self._hierarchy.unrolled)
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
            dist.setup(self.config.backend, self.config.timeout)
            requested = dist.local_device(requested)
            self.history.console = dist.is_main()  # only rank 0 logs
            self.history.show_warnings = dist.is_main()
        self._device = resolve_device(requested)
        if env is not None:
            self._initialize_env(env)
        for p in self.problems:
            p.attach_engine(self, self._device)
            p.set_relations(self._relations_of(p.name, dependencies))
        self.precision = Precision(self)
        self._evaluate = LossEvaluator(by_name, self.precision)
        # compile = True: whole iterations captured and compiled (runtime/compiled/), built
        # at the first iteration
        self._whole = None
        if self.distributed:  # every rank starts from rank 0's parameters and buffers
            dist.broadcast_tensors(self.training_state().module_tensors())

    # -- Betty's attributes --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the problems run on (unless a problem was given its own)."""
        return self._device

    @property
    def leaves(self) -> list[Problem]:
        """The problems that depend on nothing (each iteration steps them), in order."""
        return [self.problems[n] for n in self.schedule.leaves]

    @property
    def train_iters(self) -> int:
        """The number of iterations :meth:`run` goes to (``config.train_iters``)."""
        return self.config.train_iters

    @train_iters.setter
    def train_iters(self, value: int) -> None:
        self.config.train_iters = value

    @property
    def valid_step(self) -> int:
        """Iterations between validations (``config.valid_step``)."""
        return self.config.valid_step

    @valid_step.setter
    def valid_step(self, value: int) -> None:
        self.config.valid_step = value

    def _initialize_env(self, env: Any) -> None:
        """Betty's environment set-up: device, the problems by name, ``initialize()``."""
        if hasattr(env, "configure_device"):
            env.configure_device(self._device)
        for p in self.problems:
            setattr(env, p.name, p)
        if hasattr(env, "initialize"):
            env.initialize()

    def _relations_of(self, name: str, dependencies: Mapping) -> dict:
        """``name``'s uppers, lowers and Betty's hypergradient paths, as Problem objects."""
        uppers = [self.problems[u] for u in self.schedule.uppers(name)]
        lowers = [self.problems[lo] for lo in self.schedule.lowers(name)]
        paths = []
        for upper, readers in dependencies.get("u2l", {}).items():
            if (upper.name if isinstance(upper, Problem) else upper) != name:
                continue
            for reader in readers:
                reader = reader.name if isinstance(reader, Problem) else reader
                # Betty's path: the upper, down through the l2u chain to the lower that
                # reads it, then the upper again.
                for chain in nx.all_simple_paths(self.graph, name, reader):
                    paths.append([self.problems[n] for n in chain] + [self.problems[name]])
        return {"parents": uppers, "children": lowers, "paths": paths, "leaf": not lowers}

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
        """One iteration: every leaf steps once; uppers step as their quotas fill.

        A Betty-style override may instead call ``leaf.step(global_step=self.global_step)`` for
        each of :attr:`leaves` (what this does).
        """
        for problem in self.problems:  # parameters are read afresh once per iteration
            problem.invalidate_parameter_cache()
        names = self.schedule.iteration()
        batches = {}
        if self.config.compile:
            if self._whole_iteration().run(names):
                for name in names:
                    self._captured_step_done(self.problems[name])
                self._guard.check()
                return
            batches = self._whole.prefetched  # read already by a capture that fell back
        for name in names:
            self._scheduled_step(self.problems[name], batches.get(name))
        self._guard.check()

    def step_problem(self, problem: Problem, global_step: int | None = None) -> None:
        """Step ``problem`` and then every upper whose quota that fills (``Problem.step``).

        A problem with lowers is stepped by its lowers' cascade, never directly: nothing.
        """
        if self.schedule.lowers(problem.name):
            return
        if global_step is not None:
            self.global_step = global_step
        problem.invalidate_parameter_cache()
        for name in self.schedule.cascade(problem.name):
            self._scheduled_step(self.problems[name])

    def _scheduled_step(self, problem: Problem, batch: Any = None) -> None:
        """One step the schedule asked for, with its hooks and the windows it closes."""
        name = problem.name
        if self.config.roll_back:
            self._roll_back.before_step(problem)
        problem.begin_step(self.global_step)
        take_step(self, problem, batch=batch)
        problem.end_step(bool(self.schedule.uppers(name)))
        self._log_problem(problem)
        # A window below closes once every problem above it has differentiated through it,
        # not at its own upper's step (nested unrolling: runtime/consumers.py).
        for lower in self.window_consumers.stepped(name):
            end_unroll_window(self.problems[lower])
        for lower in self.schedule.lowers(name):
            self.problems[lower].upper_stepped()
        if self.config.roll_back:
            self._roll_back.after_upper(name, self.problems,
                                        lambda p: take_step(self, p, batch=p.cur_batch))

    def _captured_step_done(self, problem: Problem) -> None:
        """The bookkeeping of a step a captured iteration took (no hook of the problem's runs
        between steps there: the compiled mode leaves problems that override
        ``on_inner_loop_start`` eager)."""
        problem.begin_step(self.global_step)
        problem.end_step(bool(self.schedule.uppers(problem.name)))
        self._log_problem(problem)
        # the captured iteration closed its windows already (nothing is left to write back);
        # this keeps the record of pending uses in step for a later eager iteration
        for lower in self.window_consumers.stepped(problem.name):
            end_unroll_window(self.problems[lower])
        for lower in self.schedule.lowers(problem.name):
            self.problems[lower].upper_stepped()

    @property
    def whole_iteration(self):
        """The compiled mode's state (:class:`~mlodsl.runtime.compiled.WholeIteration`: which
        patterns are captured, compile times, how many iterations ran captured); None unless
        ``compile = True``."""
        return self._whole_iteration() if self.config.compile else None

    def _whole_iteration(self):
        if self._whole is None:
            from mlodsl.runtime.compiled import WholeIteration
            self._whole = WholeIteration(self)
        return self._whole

    def compiles_loss_evaluations(self) -> bool:
        """Whether eager steps run compiled loss graphs' first-order evaluations through
        torch.compile: ``compile = True`` where whole iterations are not captured (fallback)."""
        return bool(self.config.compile) and self._whole_iteration().falls_back

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
                    self._guard.check()  # also after a Betty-style train_step override
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
        if self._resumed:  # that checkpoint is on disk: the newest good one, so far
            self.last_checkpoint_step = self.global_step
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
        if self.config.checkpoint_every and not self.config.checkpoint_dir:
            if not self.config.run_dir:
                raise MLOError("EngineConfig(checkpoint_every=...) needs somewhere to write: "
                               "set checkpoint_dir (or run_dir: checkpoints then go to "
                               "run_dir/checkpoints)")
            self.config.checkpoint_dir = os.path.join(self.config.run_dir, "checkpoints")
        if self.config.checkpoint_dir and dist.is_main():
            # Found now, not after all the training: a folder that cannot be written.
            check_writable(self.config.checkpoint_dir, "the checkpoint folder")
        if self.config.resume_from and not self._resumed:
            self.resume(self.config.resume_from)
        self._seed()
        if dist.is_main():
            for sink in make_sinks(self.config.logger_type, self.config.run_dir, self.history):
                if hasattr(sink, "truncate_after"):
                    if self._resumed or self.config.resume_from:
                        # Drop what an interrupted run logged after its last checkpoint.
                        sink.truncate_after(self.global_step)
                    elif sink.holds_records():  # never mix two runs, never delete one
                        raise MLOError(
                            f"run_dir {self.config.run_dir} already holds the metrics of "
                            "another run", hint="give a new folder, or resume_from=... to "
                            "continue that run")
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
            try:
                self.save_checkpoint()
            except ckpt.CheckpointWriteError as err:
                self._checkpoint_failed(err, final=self.global_step >= self.config.train_iters)
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
                              "unrolled window or between accumulated updates (the last one is "
                              f"at {self.last_checkpoint_step})")
            return
        self._guard.check_parameters()
        try:
            self.save_checkpoint()
        except ckpt.CheckpointWriteError as err:
            self._checkpoint_failed(err, final=True)

    def _checkpoint_failed(self, err: MLOError, final: bool) -> None:
        """A checkpoint write failed (full disk...): the state is still in memory, so training
        goes on and the next checkpoint tries again; the last one failing is an error."""
        last = self.last_checkpoint_step
        on_disk = (f"the newest checkpoint on disk is iteration {last}" if last is not None
                   else "no checkpoint is on disk yet")
        message = err.diagnostics[0].message
        if final:
            raise MLOError(f"{message}: the state of iteration {self.global_step} is not saved "
                           f"({on_disk})", kind="run", hint="free disk space or choose another "
                           "folder, and run again (with --resume if a checkpoint is on disk)"
                           ) from err
        every = self.config.checkpoint_every
        nxt = f"iteration {(self.global_step // every + 1) * every}" if every else "the end"
        self.history.warn(f"{message}; training goes on, the next try is at {nxt} ({on_disk})")

    def _install_signal_handlers(self) -> dict | None:
        # Only with somewhere to write to, and only from the main thread (Python's rule).
        if not self.config.checkpoint_dir or threading.current_thread() is not threading.main_thread():
            return None
        previous = {}

        def handler(signum, frame):
            if self._interrupt is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            if self._interrupt is None and self.distributed:
                # torchrun stops every rank when one fails; one that hangs must still end.
                dist.exit_after(self.config.timeout, f"stopped by {signal.Signals(signum).name}"
                                f" and still not at the end of iteration {self.global_step} "
                                f"after {self.config.timeout:g} s: exiting without a "
                                "checkpoint", 128 + int(signum))
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
        missing = set(self.problems.keys()) - set(state.problems)
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
        self._resume_inner_loops()

    def _resume_inner_loops(self) -> None:
        """Where each problem is in its inner loop, from the restored counters (Betty's rule:
        a new loop after an upper consumed the last one, or after ``unroll_steps`` updates of a
        problem without uppers; warm-up steps start none)."""
        for p in self.problems:
            uppers = self.schedule.uppers(p.name)
            if p.count == 0:
                new = True
            elif uppers:
                new = any(self.schedule.pending(u)[p.name] == 0
                          and p.count > self.edges[(u, p.name)].warmup for u in uppers)
            else:
                new = p.count % max(p.config.unroll_steps * p.steps_per_update(False), 1) == 0
            p.resume_inner_loop(self.global_step, new)


class _NoProgress:
    """The progress display when there is none (``progress=False``, or ranks other than 0)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, engine, force: bool = False) -> None:
        """Do nothing."""
