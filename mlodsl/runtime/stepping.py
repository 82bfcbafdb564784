"""One step of one problem: batch, loss, total gradient, optimizer step, callbacks.

Kept apart from the engine so that the order of these sub-steps is written down in one place,
for every kind of step (:func:`take_step`):

1. the next batch of the problem's data (``grad_accum`` batches when accumulating; Betty's
   ``Config(gradient_accumulation=k)`` instead updates on every k-th step, the gradients of
   the steps between kept by the problem: :meth:`Problem.steps_per_update`);
2. the loss, with the problem's own buffers live (BatchNorm statistics advance once) and every
   other problem's buffers protected;
3. the gradient with respect to the problem's parameters, hypergradients through every lower
   included (:func:`mlodsl.runtime.hypergrad.chain.total_gradient`), averaged over the
   accumulated batches;
4. the update, one of

   * plain: ``Engine.before_optimizer_step`` (gradients averaged across ranks, fp16
     unscaling), gradient clipping, the divergence guard (``Engine.allow_step``: a skipped step
     changes no parameter), the torch optimizer's step, ``param_callback``/``after_step``;
   * differentiable (an upper unrolls through the problem: ``unroll``, or an
     ``IterativeProblem``): gradients averaged across ranks and clipped with a graph, the guard,
     one step of the problem's :class:`~mlodsl.runtime.window.UnrolledWindow` (its fast
     weights); the window is closed, and the fast weights written back, when the upper has
     consumed them (:func:`end_unroll_window`, then ``param_callback``/``after_step``);
   * checkpointed (``unroll(checkpoint=True)``): steps 2-4 of the differentiable update as one
     recompute-in-backward function over the window's tape
     (:mod:`mlodsl.runtime.hypergrad.unroll`), which keeps no graph between the forward and
     the upper's backward;

5. the scheduler (a ``ReduceLROnPlateau`` is stepped on validation metrics instead).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from mlodsl.runtime.hypergrad.chain import total_gradient
from mlodsl.runtime.hypergrad.unroll import new_tape, run_checkpointed
from mlodsl.runtime.problem import call_param_callback
from mlodsl.runtime.vectors import norm

__all__ = ["take_step", "end_unroll_window", "window_copies"]


def take_step(engine, problem, batch: Any = None) -> torch.Tensor:
    """Take one optimization step of ``problem``; return its (last) loss, not detached.

    ``batch``: use this batch (for every accumulated one) instead of drawing from the data.
    """
    differentiable = engine.is_unrolled(problem.name)
    accum = problem.accumulation_steps(unrolled=differentiable)
    draws = (problem.next_batch() if batch is None else batch for _ in range(accum))
    first_order, checkpointed = engine.unroll_settings(problem.name) if differentiable \
        else (False, False)
    if checkpointed and not first_order:
        loss, metrics = _checkpointed_update(engine, problem, list(draws))
        engine.watch_finite(problem, loss)
        problem.record_step(loss, metrics)
    else:
        create_graph = differentiable and not first_order
        total, loss, metrics = _accumulate(engine, problem, draws, accum, create_graph,
                                           own_step=True, first_order=not create_graph,
                                           watch=True,
                                           shown=window_copies(engine, problem)
                                           if differentiable else None)
        problem.record_step(loss, metrics)
        if not differentiable:
            per_update = problem.steps_per_update(unrolled=False)
            if per_update > 1:  # Betty's accumulation: an update every per_update-th step
                total = problem.accumulate_gradients([g / per_update for g in total],
                                                     problem.count % per_update == 0)
                if total is None:
                    return loss
            _optimizer_update(engine, problem, total, loss)
            return loss
        if not _differentiable_update(engine, problem, total, loss):
            return loss
    _scheduler_step(problem)
    return loss


def end_unroll_window(problem) -> None:
    """Close a problem's unrolled window: fast weights written back, graph dropped, then the
    problem's callbacks on its live parameters."""
    params = problem.unrolled_window.close()
    if params is not None:
        _after_update(problem, params)


# -- the shared sub-steps ------------------------------------------------------------------------

def _accumulate(engine, problem, batches: Iterable[Any], accum: int, create_graph: bool,
                own_step: bool, first_order: bool, watch: bool, shown=None
                ) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """Steps 2-3 over ``batches``: ``(total gradient, last loss, last metrics)``.

    ``watch``: hand each loss to the divergence guard. ``first_order``: the loss will not be
    differentiated through its gradient (a compiled problem may run ``torch.compile``).
    ``shown``: other problems' parameters read as these tensors (:func:`window_copies`).
    """
    total: list[torch.Tensor] | None = None
    loss = metrics = None
    for current in batches:
        loss, metrics = engine.evaluate_loss(problem, current, own_step=own_step,
                                             with_metrics=True, first_order=first_order,
                                             shown=shown)
        if watch:
            engine.watch_finite(problem, loss)
        # fp16: the loss is scaled so that the whole total gradient is (precision.py).
        grads = total_gradient(engine, problem, engine.precision.scale_loss(problem, loss),
                               create_graph=create_graph)
        if accum > 1:
            grads = [g / accum for g in grads]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    return total, loss, metrics


def _average_and_clip(engine, problem, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """A differentiable gradient averaged across ranks and clipped to ``problem.clip_norm()``."""
    grads = engine.average_across_ranks(grads)
    clip = problem.clip_norm()
    if clip and clip > 0:
        scale = torch.clamp(clip / (norm(grads) + 1e-6), max=1.0)
        grads = [g * scale for g in grads]
    return grads


def window_copies(engine, problem) -> dict[str, list[torch.Tensor]]:
    """What an unrolled step of ``problem`` reads instead of live parameters that may change
    in place while its window is open: differentiable copies (``clone``), by problem name.

    The tape then holds the values the step read, and gradients still reach the live
    parameters through the copies (:mod:`mlodsl.runtime.consumers`). Fast weights are never
    changed in place and are read as they are.
    """
    out = {}
    for name in engine.window_consumers.copied_readers(problem.name):
        other = engine.problems[name]
        if not other.unrolled_window.is_open:
            out[name] = [p.clone() for p in other.trainable_parameters()]
    return out


def _optimizer_update(engine, problem, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
    params = problem.trainable_parameters()
    for p, g in zip(params, grads):
        p.grad = g.detach() if g.requires_grad else g
    # Average across ranks and unscale first: clipping and the guard see the true gradient.
    engine.before_optimizer_step(problem)
    clip = problem.clip_norm()
    if clip and clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    if not engine.allow_step(problem, loss, [p.grad for p in params]):
        _clear_grads(params)
        return
    engine.precision.step(problem)
    _clear_grads(params)
    _after_update(problem, params)
    _scheduler_step(problem)


def _differentiable_update(engine, problem, grads: list[torch.Tensor], loss: torch.Tensor
                           ) -> bool:
    """One step of the problem's window along ``grads``; False when the guard refused it."""
    window = problem.unrolled_window
    window.open()
    grads = _average_and_clip(engine, problem, grads)
    if not engine.allow_step(problem, loss, grads):
        return False
    window.step(grads)
    return True


def _clear_grads(params) -> None:
    # What optimizer.zero_grad(set_to_none=True) does for the gradients this step set, without
    # its profiler record and walk over every param group (a few percent of a small step).
    for p in params:
        p.grad = None


def _after_update(problem, params) -> None:
    with torch.no_grad():
        call_param_callback(problem, params)
        if problem.after_step is not None:
            problem.after_step(params)


def _scheduler_step(problem) -> None:
    sched = problem.scheduler
    if sched is None:
        return
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return  # stepped on a validation metric by the engine
    sched.step()


# -- the checkpointed update ---------------------------------------------------------------------

_TENSOR = object()  # marks where a state layout takes a tensor


def _checkpointed_update(engine, problem, batches: list[Any]) -> tuple[torch.Tensor, dict]:
    """Steps 2-4 of a differentiable step under activation checkpointing; ``(loss, metrics)``.

    The step is a function ``body`` of *every* tensor it is differentiated with respect to:
    the fast weights, the optimizer's carried state (momentum, moments) and the other
    problems' current parameters (the uppers' hyperparameters); while it runs, the other
    problems are shown these inputs as their current tensors. The window's tape
    (:func:`mlodsl.runtime.hypergrad.unroll.run_checkpointed`) runs it without a graph and
    reruns it with one in the upper's backward.
    """
    window = problem.unrolled_window
    window.open()
    diffopt = window.optimizer
    states, groups = diffopt.state, diffopt.snapshot_groups()
    # What the recomputation closure may hold: nothing that leads to this step's outputs (the
    # optimizer's newest state, the problem's fast weights), or the closure, kept alive by the
    # outputs' graph, would keep that graph alive in turn (a cycle gc cannot see through
    # autograd): state *layouts* and a stateless copy of the update rule only. (The problems
    # and their windows are reachable, but drop their fast weights when the window closes.)
    rule = diffopt.rule()
    layout = [{k: (_TENSOR if isinstance(v, torch.Tensor) else v) for k, v in sorted(st.items())}
              for st in states]
    others = [o for o in engine.problems.values() if o is not problem]
    # copies of parameters that may change in place while the window is open: the tape keeps
    # what this step read (mlodsl.runtime.consumers)
    copies = window_copies(engine, problem)
    context = [copies.get(o.name) or list(o.current_parameters()) for o in others]
    state_flat = [t for st in states for t in _state_tensors(st)]
    sizes = (len(window.fast), len(state_flat), [len(c) for c in context])
    calls = {"n": 0}
    record: dict[str, Any] = {}

    def body(*args: torch.Tensor, replay: bool = False):
        # The first call is the step itself; later calls recompute it, advancing no buffers or
        # counters. ``replay``: values only (the step itself, whose outputs are detached at
        # once, and rebuilding a dropped step's inputs), so the gradient needs no graph.
        first = calls["n"] == 0
        calls["n"] += 1
        n_fast, n_state, n_ctx = sizes
        fast, rest = list(args[:n_fast]), list(args[n_fast:])
        flat_state, rest = rest[:n_state], rest[n_state:]
        it = iter(flat_state)
        in_states = [{k: (next(it) if v is _TENSOR else v) for k, v in st.items()}
                     for st in layout]
        with contextlib.ExitStack() as shown:
            for o, n in zip(others, n_ctx):
                shown.enter_context(o.unrolled_window.presenting(rest[:n]))
                rest = rest[n:]
            shown.enter_context(window.presenting(fast))
            with torch.enable_grad():
                total, loss, metrics = _accumulate(
                    engine, problem, batches, len(batches), create_graph=not replay,
                    own_step=first, first_order=False, watch=False)
                if first:
                    record["loss"], record["metrics"] = loss.detach(), metrics
                total = _average_and_clip(engine, problem, total)
                with torch.no_grad() if replay else contextlib.nullcontext():
                    new, new_states = rule.apply(fast, total, in_states, groups)
        if first:  # the layout only: holding the tensors would keep this step's graph alive
            record["states"] = [{k: (None if isinstance(v, torch.Tensor) else v)
                                 for k, v in st.items()} for st in new_states]
            record["keys"] = [_state_keys(st) for st in new_states]
        return (*new, *[t for st in new_states for t in _state_tensors(st)])

    tape = window.tape(lambda: new_tape(engine.window_length(problem.name)))
    own = [*window.fast, *state_flat]
    out = run_checkpointed(tape, body, len(own), [*own, *(t for c in context for t in c)])
    n_params = sizes[0]
    # Re-attach the returned state tensors (the checkpoint's outputs carry the graph).
    it = iter(out[n_params:])
    new_states = []
    for st, keys in zip(record["states"], record["keys"]):
        st = dict(st)
        for key in keys:
            st[key] = next(it)
        new_states.append(st)
    window.advance(out[:n_params], new_states)
    return record["loss"], record["metrics"]


def _state_keys(state: dict) -> list[str]:
    return sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))


def _state_tensors(state: dict) -> list[torch.Tensor]:
    return [state[k] for k in _state_keys(state)]
