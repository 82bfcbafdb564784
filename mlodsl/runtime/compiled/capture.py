"""The compiled execution mode: each schedule pattern captured once, compiled once, run.

``engine { compile = True }`` (``EngineConfig(compile=True)``) gives the engine a
:class:`WholeIteration`. Every engine iteration the schedule says which problems step (the
*pattern*: with ``every 5``, ``(lower,)`` four times and then ``(lower, upper)``); for each
pattern seen the first time, :class:`~mlodsl.runtime.compiled.iteration.CapturedIteration`
builds one pure function of the training state, ``torch.compile`` compiles it (one graph,
``fullgraph=True``), and from then on that pattern's iterations are one call of it. Data
loading, learning-rate schedulers, counters, logging, validation, checkpoints and the
divergence guard's single check per iteration stay in the engine, unchanged.

What a graph cannot hold runs on the eager path (where ``compile = True`` still runs the loss
graphs' first-order evaluations through torch.compile), with ONE warning naming the reason
(and, for a ``.mlo`` program, the field's ``FILE:LINE:COL``): ``reinforce`` (it samples and
keeps a baseline on the host), ``unroll`` windows with a warm-up, ``grad_accum`` or more
than one level above them (a window of several steps under one upper is captured: its inside
steps on the window's fast weights, its closing iteration replaying it, ``iteration.py``),
``cg(tol > 0)``, an optimizer without a functional rule,
modules with buffers (BatchNorm statistics), ``on_nan = "skip"``, mixed precision,
data parallelism, ``roll_back``, or a loss or callback that torch.compile cannot trace as one
graph (``.item()``, data-dependent Python): the last kind is found when the pattern is first
compiled. A pattern also runs eagerly until its optimizers have state (torch creates it at their
first step).

Compiling never holds the run up: a pattern's first compilation runs in a background thread,
on copies of the state and of the last batches (a dry call of the compiled function: what it
writes goes to the copies), while the engine keeps taking that pattern's iterations eagerly;
the first iteration after the thread is done switches to the compiled function (eager and
compiled iterations give the same numbers to rounding). So a run is never slower end to end
than eager by more than the thread's share of the CPU, however long a cold compilation takes,
and a run shorter than the compilation simply stays eager. ``MLODSL_COMPILE_WAIT=1`` compiles
in the foreground instead (the first iteration waits for it: benchmarks that time the
compilation, tests that count captured iterations).

``MLODSL_COMPILE_BACKEND`` chooses how a captured function runs: ``inductor`` (the default:
``torch.compile``), any other torch.compile backend name, or ``python`` (the captured function
itself, eagerly: the same code torch.compile receives; the tests use it). Inductor's cache
(``TORCHINDUCTOR_CACHE_DIR``, by default under the temporary directory) makes a second run's
compilation of the same program much faster.

On CUDA (:func:`compile_options`) a pattern is compiled with ``mode="reduce-overhead"``: its
iteration is replayed as one CUDA graph, reading its batches from static buffers
(:class:`_CudaGraphStaging`); ``MLODSL_CUDA_GRAPHS=0`` turns that off.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from mlodsl.runtime.compiled.iteration import CAPTURED_METHODS, CapturedIteration
from mlodsl.runtime.compiled.optimizers import NotCapturable, functional_optimizer
from mlodsl.runtime.problem import Problem

__all__ = ["WholeIteration", "program_reasons", "Verdict", "compile_options"]


@dataclass
class Verdict:
    """Whether one piece of a program (a problem or an edge) runs in the captured graph."""

    piece: str  # "problem hpo" or "edge hpo -> classifier"
    compiled: bool
    reason: str = ""
    where: str | None = None  # FILE:LINE:COL of the field responsible, when known
    #: the piece keeps every pattern eager, not only those that step it (a module's buffers:
    #: any problem's loss may run that module, and the eager engine protects its buffers)
    everywhere: bool = False

    def line(self) -> str:
        """``problem hpo: compiled`` or ``edge ...: eager (reason) at FILE:LINE:COL``."""
        if self.compiled:
            return f"{self.piece}: compiled"
        return f"{self.piece}: eager ({self.reason})" + (f" [{self.where}]" if self.where else "")


def program_reasons(problems: Mapping[str, Any], edges: Iterable[Any], settings: Any,
                    locate: Callable[[str, str], str | None] | None = None) -> list[Verdict]:
    """Per problem and edge, whether it can be captured and why not (no torch.compile run).

    ``problems``: name -> runtime problem (module and optimizer built); ``edges``: objects with
    ``upper``, ``lower``, ``method``, ``args``; ``settings``: an ``EngineConfig`` (or any object
    with its fields); ``locate(problem, field)``: the ``FILE:LINE:COL`` of a problem's field
    (``.mlo`` programs) or None.
    """
    locate = locate or (lambda problem, field: None)
    out: list[Verdict] = []
    engine_wide = _engine_reason(settings, problems)
    edges = list(edges)
    iterative = {n for n, p in problems.items() if getattr(p, "iterative", False)}
    # a lower an upper unrolls through takes differentiable steps on fast weights that live
    # across iterations: none of its steps can be captured on its own
    uppers_of = {}
    for e in edges:
        uppers_of.setdefault(e.lower, []).append(e)

    def one_step_window(e) -> bool:  # see iteration.unroll_obstacle
        return (not getattr(e, "warmup", 0) and len(uppers_of[e.lower]) == 1
                and not any(o.upper == e.lower for o in edges)
                and not any(o.lower == e.upper for o in edges)  # no nested window
                and problems[e.lower].accumulation_steps(unrolled=True) == 1)

    unrolled = {e.lower: e for e in edges if e.method == "unroll" and not one_step_window(e)}
    for name, problem in problems.items():
        reason, field, everywhere = engine_wide, None, False
        if reason is None and any(b is not None for _, b in problem.module.named_buffers()):
            reason, field = "its module has buffers (e.g. BatchNorm statistics)", "module"
            everywhere = True
        if reason is None:
            try:
                functional_optimizer(problem.optimizer, problem.trainable_parameters())
            except NotCapturable as why:
                reason, field = str(why), "optimizer"
        if reason is None and type(problem).on_inner_loop_start is not \
                Problem.on_inner_loop_start:
            reason = "its on_inner_loop_start hook runs Python between steps"
        if reason is None and problem.steps_per_update(unrolled=False) != 1:
            reason = ("Config.gradient_accumulation keeps gradients between steps (Betty's "
                      "accumulation; the .mlo field grad_accum accumulates within a step)")
        if reason is None and name in iterative:
            reason = "an IterativeProblem's steps are unrolled across iterations"
        where = locate(name, field) if field else None
        if reason is None and name in unrolled:
            e = unrolled[name]
            reason = f"edge {e.upper} -> {e.lower} unrolls through its steps (unroll)"
            where = locate(e.upper, f"edge:{e.lower}")
        out.append(Verdict(f"problem {name}", reason is None, reason or "", where, everywhere))
    for e in edges:
        reason = engine_wide
        if reason is None and e.method not in CAPTURED_METHODS and not (
                e.method == "unroll" and one_step_window(e)):
            reason = {"unroll": "an unroll window with a warm-up, under more than one level, "
                                "through a lower with lowers, or with grad_accum runs eagerly",
                      "reinforce": "reinforce samples and keeps a baseline on the host"}.get(
                e.method, f"method '{e.method}' has no functional form")
        if reason is None and e.method == "cg" and (e.args or {}).get("tol", 0) > 0:
            reason = "cg(tol > 0) decides on the host when to stop"
        if reason is None and e.lower in iterative:
            reason = "the lower is an IterativeProblem (unrolled)"
        out.append(Verdict(f"edge {e.upper} -> {e.lower}", reason is None, reason or "",
                           locate(e.upper, f"edge:{e.lower}") if reason and reason != engine_wide
                           else None))
    return out


def _engine_reason(settings: Any, problems: Mapping[str, Any]) -> str | None:
    if not getattr(settings, "compile", False):
        return "compile = False"
    if getattr(settings, "on_nan", "stop") == "skip":
        return "on_nan = 'skip' decides on the host before every step"
    if getattr(settings, "roll_back", False):
        return "roll_back re-runs steps from host-side copies"
    strategy = getattr(settings, "strategy", "default")
    if strategy in ("distributed", "ddp", "zero", "fsdp") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "data-parallel runs average gradients across ranks between sub-steps"
    precisions = {getattr(settings, "precision", "fp32")} | {
        p.config.precision for p in problems.values()
        if p.config.explicitly_set("precision")}
    if precisions != {"fp32"}:
        return "mixed precision (autocast, gradient scaling)"
    return None


class _Entry:
    """One pattern's captured function and how it runs (or why it does not)."""

    __slots__ = ("iteration", "fn", "signature", "reason", "calls", "shapes", "background",
                 "compiled_shapes", "python_shapes", "declined", "staging")

    def __init__(self, iteration=None, reason=None):
        self.iteration = iteration
        self.fn = None
        self.signature = iteration.signature() if iteration is not None else None
        self.reason = reason
        self.calls = 0
        self.shapes = None
        self.background: _BackgroundCompile | None = None
        #: batch shapes (``_shapes``) the compiled function holds a graph for, and those
        #: whose compilation failed (their iterations run the captured function as Python)
        self.compiled_shapes: set = set()
        self.python_shapes: set = set()
        #: the iterations left were too few for a compilation to pay (decided once)
        self.declined = False
        #: CUDA graphs only: the static input buffers and the write-back rules
        self.staging: _CudaGraphStaging | None = None


class _BackgroundCompile:
    """The first (compiling) call of a compiled function, on copies, in a daemon thread.

    Daemon: a run that ends before the compilation does exits without waiting for it.
    """

    #: the GIL switch interval while a compilation runs: dynamo's tracing is pure Python,
    #: and with the default 5 ms the engine's thread waits up to that long each time it takes
    #: the GIL back (after every long kernel), which made its eager iterations 2-3x slower
    SWITCH_INTERVAL = 2e-4
    #: compilations under way in this process (see ``any_running``)
    _running = 0
    _lock = threading.Lock()

    #: compilations whose thread may still run, for :func:`_stop_compilations` at exit
    _jobs: list["_BackgroundCompile"] = []

    def __init__(self, fn: Callable, args: tuple):
        if not _BackgroundCompile._jobs:
            atexit.register(_stop_compilations)  # after torch's: so it runs before them
        _BackgroundCompile._jobs.append(self)
        self.seconds: float | None = None
        self.error: BaseException | None = None
        self.shapes = _shapes(args)
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, self.SWITCH_INTERVAL))
        with _BackgroundCompile._lock:
            _BackgroundCompile._running += 1
        self._thread = threading.Thread(target=self._compile, args=(fn, args),
                                        name="mlodsl-compile", daemon=True)
        self._thread.start()

    def _compile(self, fn, args) -> None:
        t0 = time.perf_counter()
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported by the engine's thread
            self.error = err
        self.seconds = time.perf_counter() - t0
        sys.setswitchinterval(self._interval)
        with _BackgroundCompile._lock:
            _BackgroundCompile._running -= 1

    @staticmethod
    def any_running() -> bool:
        """Whether a compilation runs in some thread: torch's compiler stance is global, so
        the engine's thread must not skip guards then (the compiling thread would inherit the
        stance, and skip_guard_eval_unsafe forbids compiling)."""
        return _BackgroundCompile._running > 0

    def done(self) -> bool:
        """Whether the compilation has finished (well or not)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the compilation finishes (or ``timeout`` seconds pass)."""
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Raise :class:`_Cancelled` in the thread at its next Python instruction."""
        import ctypes

        if self._thread.is_alive() and self._thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident),
                                                       ctypes.py_object(_Cancelled))

    @staticmethod
    def jobs() -> list["_BackgroundCompile"]:
        """Every compilation started in this process."""
        return list(_BackgroundCompile._jobs)


class WholeIteration:
    """The engine's compiled mode: runs an iteration captured, or says the engine must.

    The engine calls :meth:`run` with the iteration's pattern; True means the iteration was
    taken (state written back, losses handed to the guard, counters and schedulers advanced),
    False means the engine takes it eagerly, with the batches in :attr:`prefetched` when some
    were already read (only when a pattern's first compilation failed and the captured
    function could not run as Python either: each problem's first batch of the iteration).
    """

    def __init__(self, engine):
        self.engine = engine
        self.backend = os.environ.get("MLODSL_COMPILE_BACKEND", "inductor")
        self.foreground = os.environ.get("MLODSL_COMPILE_WAIT", "") not in ("", "0")
        #: (engine step, wall time) of the eager iterations timed to decide whether to compile
        self._stamps: list[tuple[int, float]] = []
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._warned: set[str] = set()
        self.prefetched: dict[str, Any] = {}
        #: per lower whose unrolled window runs captured: its steps so far (batch, lrs)
        self._window_batches: dict[str, list] = {}
        #: iterations taken by a captured function (compiled, or as Python with the backend
        #: ``python``)
        self.captured_iterations = 0
        self.compile_seconds: dict[tuple[str, ...], float] = {}
        verdicts = program_reasons(engine.problems, engine.edges.values(), engine.config,
                                   getattr(engine, "field_location", None))
        self.verdicts = verdicts
        # a piece that is eager makes every pattern that holds it eager
        self._eager = {v.piece: v for v in verdicts if not v.compiled}

    @property
    def falls_back(self) -> bool:
        """Whether some pattern runs eagerly for a reason other than a missing first step."""
        return bool(self._eager) or any(e.reason for e in self._entries.values())

    # -- the hook ----------------------------------------------------------------------------------
    def run(self, names: list[str]) -> bool:
        """Take the iteration stepping ``names`` captured; False: the engine steps eagerly."""
        self.prefetched = {}
        key = tuple(names)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = self._capture(key)
        if entry.iteration is None:
            return False
        it = entry.iteration
        if not it.ready():
            return False  # torch's first step creates the optimizer state
        if it.signature() != entry.signature:  # a hyperparameter other than lr changed
            entry = self._entries[key] = self._capture(key)
            if entry.iteration is None:
                return False
            it = entry.iteration
        # a window of several steps runs captured from its first step to its last (its fast
        # weights then carry no graph: the closing step replays the window), or not at all
        carried = {n: self._window_batches.get(n) for n in it.windows}
        for n in it.windows:
            window = self.engine.problems[n].unrolled_window
            if window.is_open and (carried[n] is None or len(carried[n]) != window.steps):
                return False  # opened by an eager step: the eager engine closes it
            if n in it.inside and not window.is_open and not self._closes_captured(n):
                return False
        forced = any(carried[n] for n in it.windows)
        compiled = self._compiled_yet(entry, key)
        if not compiled and not forced:
            return False  # compiling in the background: this iteration runs eagerly
        batches = {n: [self.engine.problems[n].next_batch() for _ in range(it.steps[n].accum)]
                   for n in key}
        window_lrs = {}
        for n in it.windows:
            window = self.engine.problems[n].unrolled_window
            if not window.is_open:
                carried[n] = self._window_batches[n] = []
            # the step's batch and learning rates (the tensors are refilled in place later)
            lrs = [lr.clone() for lr in it.steps[n].optimizer.learning_rates()]
            carried[n].append((batches[n][0], lrs))
            if n in it.closing:
                batches[n] = [b for b, _ in carried[n]]
                window_lrs[n] = [lr for _, lr in carried[n]]
        args = it.inputs(batches, window_lrs)
        try:
            if not compiled:  # the window's other steps ran captured: so does this one
                outputs = it(*args)
            else:
                outputs = self._call(entry, key, args)
        except NotCapturable as why:
            entry.iteration = None
            entry.reason = str(why)
            self._warn(key, str(why))
            # This iteration's batches are drawn already: take it with the captured function
            # run as Python (the same steps), and later ones on the eager path.
            try:
                outputs = it(*args)
            except Exception:  # noqa: BLE001 - the eager path reports it properly
                self.prefetched = {n: b[0] for n, b in batches.items()}
                return False
            self._after(key, outputs)
            self._windows_after(it, outputs)
            return True
        self._after(key, outputs)
        self._windows_after(it, outputs)
        self.captured_iterations += 1
        return True

    def _closes_captured(self, lower: str) -> bool:
        """Whether the pattern that closes ``lower``'s window has been seen and captured."""
        return any(lower in k and e.iteration is not None and lower in e.iteration.closing
                   for k, e in self._entries.items())

    def _windows_after(self, it: CapturedIteration, outputs: dict) -> None:
        """A window's step taken: its fast weights and state go to the window; a window
        closed: the live tensors hold its end already, the window is dropped."""
        for n in it.windows:
            window = self.engine.problems[n].unrolled_window
            if n in it.inside:
                fast, states = outputs[f"window:{n}"]
                window.open()
                window.advance([f.detach() for f in fast],
                               it.steps[n].optimizer.to_window(states))
            else:
                window.load_state_dict(None)
                self._window_batches.pop(n, None)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every background compilation started so far has finished."""
        for entry in list(self._entries.values()):
            if entry.background is not None:
                entry.background.wait(timeout)

    def _compiled_yet(self, entry: _Entry, key) -> bool:
        """Whether the pattern's compiled function can take this iteration: True when it
        runs as Python, compiles in the foreground or is compiled; else starts (once) or
        checks its compilation in the background, and False while that runs."""
        if self.backend == "python" or self.foreground or entry.calls:
            return True
        if entry.background is None and not self._worth_compiling(entry):
            return False
        if entry.background is None:
            try:  # first: on CUDA it moves optimizer step counts, which the copies copy
                entry.fn = entry.fn or self._compile(entry)
            except Exception as err:  # noqa: BLE001 - an unknown backend name, say
                entry.iteration, entry.reason = None, f"torch.compile: {_first_line(err)}"
                self._warn(key, entry.reason)
                return False
            args = self._dry_arguments(entry.iteration)
            if args is None:  # no batch seen yet to compile with: compile in the foreground
                return True
            entry.background = _BackgroundCompile(entry.fn, _dry(entry, args))
            return False
        job = entry.background
        if not job.done():
            return False
        if job.error is not None:
            why = (f"torch.compile could not hold the iteration as one graph: "
                   f"{_first_line(job.error)}")
            entry.iteration, entry.reason = None, why
            self._warn(key, why)
            return False
        entry.calls = 1
        entry.shapes = None  # the first real call evaluates the graph's guards
        entry.compiled_shapes.add(job.shapes)
        self.compile_seconds[key] = job.seconds
        self.engine.history.info(f"compiling iteration ({', '.join(key)}): {job.seconds:.1f} s "
                                 f"(in the background; the iterations meanwhile ran eagerly)")
        return True

    #: eager iterations of a pattern timed before deciding whether to compile it
    TIMED_ITERATIONS = 20
    #: the share of an eager iteration's time a compiled one saves (measured 0.4-0.6 of it
    #: saved on the seed's program, benchmarks/README.md): the estimate errs low
    SAVED_SHARE = 0.4

    def _worth_compiling(self, entry: _Entry) -> bool:
        """Whether the iterations left can repay a compilation: after timing the first
        eager engine iterations, ``left * eager_seconds * SAVED_SHARE`` must exceed the
        compilation's assumed cost (``MLODSL_COMPILE_COST`` seconds, default 60: a cold
        compilation took 15-175 s on a loaded 2-core CPU, a warm one 3-12 s; 0 always
        compiles). Python's GIL makes a background compilation slow the eager iterations by
        about its own length on a CPU (most torch kernels hold the GIL), so compiling only
        pays when the run is long enough to win it back; a run that is not stays eager."""
        if entry.declined:
            return False
        cost = float(os.environ.get("MLODSL_COMPILE_COST", "60"))
        if cost <= 0:
            return True
        stamps = self._stamps
        if not stamps or stamps[-1][0] != self.engine.global_step:
            stamps.append((self.engine.global_step, time.perf_counter()))
        if len(stamps) <= self.TIMED_ITERATIONS:
            return False
        per_iteration = sorted((tb - ta) / max(1, b - a)
                               for (a, ta), (b, tb) in zip(stamps, stamps[1:]))[
            len(stamps) // 2 - 1]
        left = max(0, self.engine.train_iters - self.engine.global_step)
        if left * per_iteration * self.SAVED_SHARE > cost:
            return True
        entry.declined = True
        self.engine.history.info(
            f"not compiling iteration ({', '.join(entry.iteration.pattern)}): {left} "
            f"iterations left at {1e3 * per_iteration:.1f} ms would save less than the "
            f"compilation's ~{cost:.0f} s (MLODSL_COMPILE_COST)")
        return False

    def _dry_arguments(self, it: CapturedIteration) -> tuple | None:
        """Copies of the state and of each problem's last batch, shaped like an iteration's
        arguments: what the background compilation runs on (and writes to). None when some
        problem has no batch yet."""
        last = {n: self.engine.problems[n].cur_batch for n in it.pattern}
        if any(b is None for b in last.values()):
            return None
        batches = {n: [last[n] for _ in range(it.windows[n] if n in it.closing
                                               else it.steps[n].accum)] for n in it.pattern}
        return _copy(it.inputs(batches))

    def static_buffers(self) -> dict[tuple[str, ...], dict]:
        """Per pattern run with CUDA graphs: its static batch buffers, by batch shapes, and
        how many iterations were copied into them (``{"buffers": {...}, "fills": N}``)."""
        return {k: {"buffers": e.staging.buffers, "fills": e.staging.fills}
                for k, e in self._entries.items() if e.staging is not None}

    def patterns(self) -> dict[tuple[str, ...], str]:
        """Each pattern seen so far: ``"captured"`` or ``"eager: REASON"``."""
        return {k: "captured" if e.iteration is not None else f"eager: {e.reason}"
                for k, e in self._entries.items()}

    # -- capture and compile -----------------------------------------------------------------------
    def _capture(self, key: tuple[str, ...]) -> _Entry:
        for v in self.verdicts:
            if v.compiled:
                continue
            if v.piece.startswith("problem ") and (v.everywhere or v.piece[8:] in key):
                return self._eager_entry(key, v)
            if v.piece.startswith("edge "):
                upper = v.piece[5:].split(" -> ")[0]
                if upper in key:
                    return self._eager_entry(key, v)
        try:
            return _Entry(CapturedIteration(self.engine, key))
        except NotCapturable as why:
            self._warn(key, str(why))
            return _Entry(reason=str(why))

    def _eager_entry(self, key, verdict: Verdict) -> _Entry:
        self._warn(key, f"{verdict.piece}: {verdict.reason}", verdict.where)
        return _Entry(reason=verdict.reason)

    def _call(self, entry: _Entry, key, args) -> dict:
        it = entry.iteration
        if self.backend == "python":
            return it(*args)
        if entry.fn is None:
            entry.fn = self._compile(entry)
        shapes = _shapes(args)
        if entry.staging is None:
            return self._call_compiled(entry, key, args, shapes)
        # CUDA graphs: the batches go into the pattern's static buffers, every tensor the
        # graph writes keeps its address; a new iteration begins (the previous replay's
        # outputs may be overwritten), so its outputs are copied out before anyone keeps them
        args = entry.staging.stage(args, shapes)
        torch.compiler.cudagraph_mark_step_begin()
        return _copy(self._call_compiled(entry, key, args, shapes))

    def _compile(self, entry: _Entry):
        """``torch.compile`` of the pattern's captured function, with the options the
        device calls for (:func:`compile_options`); on CUDA also the entry's static input
        buffers (:class:`_CudaGraphStaging`)."""
        it = entry.iteration
        options = compile_options(it_device(it), self.backend)
        if options.get("mode") == "reduce-overhead":
            entry.staging = _CudaGraphStaging(it)
        return torch.compile(it, fullgraph=True, dynamic=False, backend=self.backend,
                             **options)

    def _call_compiled(self, entry: _Entry, key, args, shapes) -> dict:
        """Call the compiled function (compiling it at its first call)."""
        if entry.calls and not self.foreground and shapes not in entry.compiled_shapes:
            return self._new_shapes(entry, key, shapes, args)
        if entry.calls:
            if shapes == entry.shapes and not _BackgroundCompile.any_running():
                # Same pattern, same parameters (checked by run()), same batch shapes: the
                # graph's guards would pass, and evaluating them costs as much as a tenth of
                # a small iteration. Anything else (a smaller last batch) goes through them.
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return entry.fn(*args)
            entry.shapes = shapes
            return entry.fn(*args)
        t0 = time.perf_counter()
        try:
            out = entry.fn(*args)
        except Exception as err:  # noqa: BLE001 - compiling is a speed-up, never a failure
            raise NotCapturable(f"torch.compile could not hold the iteration as one graph: "
                                f"{_first_line(err)}") from None
        seconds = time.perf_counter() - t0
        entry.calls += 1
        entry.shapes = shapes
        entry.compiled_shapes.add(shapes)
        self.compile_seconds[key] = seconds
        self.engine.history.info(f"compiling iteration ({', '.join(key)}): {seconds:.1f} s")
        return out

    def _new_shapes(self, entry: _Entry, key, shapes, args) -> dict:
        """An iteration whose batches have shapes the compiled function has no graph for (a
        smaller last batch): compiling them would hold the run up as long as the first
        compilation, so they are compiled in the background on copies of this iteration's
        arguments, and this iteration (and those of the same shapes until then) runs the
        captured function as Python: the same steps, its batches being drawn already."""
        job = entry.background
        if job is not None and job.done() and job.shapes not in entry.compiled_shapes:
            if job.error is None:
                entry.compiled_shapes.add(job.shapes)
                self.engine.history.info(
                    f"compiling iteration ({', '.join(key)}) for batches of another shape: "
                    f"{job.seconds:.1f} s (in the background)")
            else:
                entry.python_shapes.add(job.shapes)
            if shapes in entry.compiled_shapes:
                return self._call_compiled(entry, key, args, shapes)
        if shapes not in entry.python_shapes and (job is None or job.done()):
            entry.background = _BackgroundCompile(entry.fn, _dry(entry, _copy(args)))
        return entry.iteration(*args)

    def _warn(self, key, reason: str, where: str | None = None) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        prefix = f"{where}: " if where else ""
        warnings.warn(f"{prefix}compile = True: the iteration stepping {', '.join(key)} runs "
                      f"eagerly: {reason}", RuntimeWarning, stacklevel=4)

    # -- after a captured iteration ----------------------------------------------------------------
    def _after(self, key, outputs: dict) -> None:
        engine = self.engine
        for name in key:
            problem = engine.problems[name]
            loss, sums, metrics = outputs[name]
            problem.record_step(loss, metrics)
            engine.watch_finite(problem, loss)
            if sums is not None:  # the guard reads hypergradient-carrying gradients
                engine.allow_step(problem, loss, [sums])
            sched = problem.scheduler
            if sched is not None and not isinstance(
                    sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step()  # outside the graph: the new lr is a tensor input next time


def compile_options(device: torch.device, backend: str = "inductor",
                    cuda_graphs: str | None = None) -> dict:
    """The ``torch.compile`` options for a captured iteration on ``device``.

    On CUDA with inductor: ``mode="reduce-overhead"`` (the iteration's kernels replayed as one
    CUDA graph: a small iteration is otherwise bound by kernel launches). Elsewhere, with
    another backend, or with ``MLODSL_CUDA_GRAPHS=0`` (``cuda_graphs``; read from the
    environment when None): no options, torch's defaults.
    """
    if cuda_graphs is None:
        cuda_graphs = os.environ.get("MLODSL_CUDA_GRAPHS", "1")
    if torch.device(device).type == "cuda" and backend == "inductor" and cuda_graphs != "0":
        return {"mode": "reduce-overhead"}
    return {}


def it_device(it: CapturedIteration) -> torch.device:
    """The device of a captured iteration: that of its stepping problems' parameters."""
    for name in it.pattern:
        for p in it.problems[name].trainable_parameters():
            return p.device
    return torch.device("cpu")


class _CudaGraphStaging:
    """What a captured iteration needs to run as a CUDA graph (``mode="reduce-overhead"``).

    A CUDA graph replays fixed addresses, and inductor records one only when every tensor
    the graph writes is a *static* input (its address fixed: else it falls back to plain
    kernels, with a log line). So:

    - the parameters, optimizer states and learning-rate tensors (the graph writes the
      first two back in place) are marked static at every call (``p.detach()`` makes new
      tensor objects on the same storage);
    - each pattern's batches (and the lowers' last batches it reads) are copied into static
      buffers preallocated once per batch shape (:attr:`buffers`), the graph's inputs;
    - an optimizer keeping its ``step`` counts as CPU tensors (Adam, AdamW, RMSprop,
      Adagrad) has them moved to the parameters' device (:func:`_steps_on_device`): a CPU
      input the graph writes would make inductor run it without a CUDA graph;
    - the learning rates are 0-d tensors on the parameters' device already
      (``FunctionalOptimizer``), refilled outside the graph when a scheduler changes them.
    """

    def __init__(self, it: CapturedIteration):
        #: batch shapes (``_shapes``) -> the static buffers of that shape
        self.buffers: dict[tuple, Any] = {}
        #: iterations whose batches were copied into the buffers
        self.fills = 0
        optimizers = [it.problems[n].optimizer for n in it.pattern]
        optimizers += [fo.optimizer for fo in it.sama_optimizers.values()]
        for opt in optimizers:
            _steps_on_device(opt)

    def stage(self, args: tuple, shapes: tuple) -> tuple:
        """``args`` with the batches copied into this shape's static buffers and every
        tensor the graph reads or writes marked static."""
        buffers = self.buffers.get(shapes)
        if buffers is None:
            buffers = self.buffers[shapes] = _copy(args[3:])
            staged = buffers
        else:
            staged = _fill(buffers, args[3:])
        self.fills += 1
        args = tuple(args[:3]) + tuple(staged)
        _mark_static(args)
        return args


def _steps_on_device(opt) -> None:
    """Move ``opt``'s ``step`` counts (torch keeps them as CPU tensors unless ``capturable``
    or ``fused``) to their parameters' devices, where the graph can write them. Its
    param_groups stay as they were: torch's own steps read a device count with one
    ``.item()`` (the eager iterations before the compilation), and a checkpoint loaded by
    ``load_state_dict`` puts the counts back on the CPU (a later compilation moves them
    again), so checkpoints resume on any device."""
    if opt is None:
        return
    for state in opt.state.values():
        for key in ("step",):
            step = state.get(key)
            if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                device = next((t.device for t in state.values()
                               if isinstance(t, torch.Tensor) and t.device.type == "cuda"),
                              None)
                if device is not None:
                    state[key] = step.to(device)


def _fill(buffers, new):
    """Copy ``new``'s tensors into ``buffers`` (same structure); other leaves are ``new``'s."""
    if isinstance(buffers, torch.Tensor):
        buffers.copy_(new, non_blocking=True)
        return buffers
    if isinstance(new, tuple) and hasattr(new, "_fields"):
        return type(new)(*(_fill(b, x) for b, x in zip(buffers, new)))
    if isinstance(new, (list, tuple)):
        return type(new)(_fill(b, x) for b, x in zip(buffers, new))
    if isinstance(new, dict):
        return {k: _fill(buffers[k], v) for k, v in new.items()}
    return new


def _mark_static(x) -> None:
    """Mark every tensor in ``x`` as a static input (no guard: the address is what counts)."""
    if isinstance(x, torch.Tensor):
        torch._dynamo.mark_static_address(x, guard=False)  # sets a flag: cheap to repeat
    elif isinstance(x, (list, tuple)):
        for y in x:
            _mark_static(y)
    elif isinstance(x, dict):
        for y in x.values():
            _mark_static(y)


def _dry(entry: _Entry, args: tuple) -> tuple:
    """The arguments of a background (compiling) call: on CUDA marked static like the real
    calls' (whether an input is static is part of what is compiled)."""
    if entry.staging is not None:
        _mark_static(args)
    return args


class _Cancelled(BaseException):
    """Raised inside a compilation thread that the process no longer waits for."""


def _stop_compilations(timeout: float = 30.0) -> None:
    """At exit: stop the compilations still running, so the interpreter does not finalise
    under a thread deep in torch's compiler (which aborts the process: "terminate called
    without an active exception"). The run is over; their result would not be used. The
    thread gets :class:`_Cancelled` at its next Python instruction (compiling is mostly
    Python; a C++ compiler runs in a worker process), then is waited for."""
    for job in _BackgroundCompile.jobs():
        job.cancel()
    for job in _BackgroundCompile.jobs():
        job.wait(timeout)


def _copy(x):
    """``x`` with every tensor in its lists, tuples and dicts cloned (each occurrence its own
    copy, so no two arguments alias); other objects are shared (the iteration only reads
    them)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(_copy(y) for y in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(y) for y in x)
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _shapes(args) -> tuple:
    """Shapes and dtypes of the batches a captured function receives (``args[3:]``).

    The parameters' and states' shapes are fixed by :meth:`CapturedIteration.signature`; the
    batches' may change (a smaller last batch). A plain walk: pytree's costs 50 us here.
    """
    out: list = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append((x.shape, x.dtype))
        elif isinstance(x, (list, tuple)):
            out.append(len(x))
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            out.append(tuple(x))
            for y in x.values():
                walk(y)
        else:
            out.append(type(x))

    walk(args[3:])
    return tuple(out)


def _first_line(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
