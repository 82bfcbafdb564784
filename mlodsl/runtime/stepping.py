"""One step of one problem: batch, loss, total gradient, optimizer step, callbacks.

Kept apart from the engine so that the order of these sub-steps is written down in one place:

1. the next batch of the problem's data (``grad_accum`` batches when accumulating);
2. the loss, with the problem's own buffers live (BatchNorm statistics advance once) and every
   other problem's buffers protected;
3. the gradient with respect to the problem's parameters, hypergradients through every lower
   included (:func:`mlodsl.runtime.hypergrad.chain.total_gradient`);
4. ``Engine.before_optimizer_step`` (gradients averaged across ranks, fp16 unscaling),
   gradient clipping, the divergence guard (``Engine.allow_step``: a skipped step changes no
   parameter), the optimizer step, ``param_callback``/``after_step``, the scheduler.

A problem whose steps an upper differentiates through (``unroll``, or an ``IterativeProblem``)
takes step 4 differentiably on "fast" weights; they are written back to the live parameters
when the upper has consumed them (:func:`end_unroll_window`).
"""
from __future__ import annotations

from typing import Any

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime.hypergrad.chain import total_gradient

__all__ = ["take_step", "end_unroll_window", "window_copies"]


def take_step(engine, problem, batch: Any = None) -> torch.Tensor:
    """Take one optimization step of ``problem``; return its (last) loss, not detached."""
    accum = max(int(getattr(problem, "grad_accum", None) or problem.config.gradient_accumulation), 1)
    differentiable = engine.is_unrolled(problem.name)
    first_order = False
    if differentiable:  # unroll's options: first-order steps, activation checkpointing
        from mlodsl.runtime.hypergrad.unroll import take_checkpointed_step, unroll_settings
        first_order, checkpointed = unroll_settings(engine, problem.name)
        if checkpointed and not first_order:
            return take_checkpointed_step(engine, problem, batch)
    total: list[torch.Tensor] | None = None
    loss = None
    shown = window_copies(engine, problem) if differentiable else None
    for _ in range(accum):
        current = problem.next_batch() if batch is None else batch
        create_graph = differentiable and not first_order
        loss, metrics = engine.evaluate_loss(problem, current, own_step=True, with_metrics=True,
                                             first_order=not create_graph, shown=shown)
        engine.watch_finite(problem, loss)
        # fp16: the loss is scaled so that the whole total gradient is (precision.py).
        grads = total_gradient(engine, problem, engine.precision.scale_loss(problem, loss),
                               create_graph=create_graph)
        if accum > 1:
            grads = [g / accum for g in grads]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    problem.last_loss = loss.detach()  # for logging: holding the graph would keep its tape
    problem.last_metrics = metrics
    problem._count += 1

    if differentiable:
        _differentiable_update(engine, problem, total, loss)
    else:
        _optimizer_update(engine, problem, total, loss)
    return loss


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
        live = other.trainable_parameters()
        current = other.current_parameters()
        if all(c is p for c, p in zip(current, live)):
            out[name] = [p.clone() for p in live]
    return out


def _optimizer_update(engine, problem, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
    params = problem.trainable_parameters()
    for p, g in zip(params, grads):
        p.grad = g.detach() if g.requires_grad else g
    # Average across ranks and unscale first: clipping and the guard see the true gradient.
    engine.before_optimizer_step(problem)
    clip = problem.grad_clip if problem.grad_clip is not None else problem.config.gradient_clipping
    if clip and clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    if not engine.allow_step(problem, loss, [p.grad for p in params]):
        _clear_grads(params)
        return
    engine.precision.step(problem)
    _clear_grads(params)
    _after_update(problem, params)
    _scheduler_step(engine, problem)


def _clear_grads(params) -> None:
    # What optimizer.zero_grad(set_to_none=True) does for the gradients this step set, without
    # its profiler record and walk over every param group (a few percent of a small step).
    for p in params:
        p.grad = None


def _after_update(problem, params) -> None:
    with torch.no_grad():
        problem.param_callback(params)
        if problem.after_step is not None:
            problem.after_step(params)


def _scheduler_step(engine, problem) -> None:
    sched = problem.scheduler
    if sched is None:
        return
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return  # stepped on a validation metric by the engine
    sched.step()


def _differentiable_update(engine, problem, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
    try:
        from mlodsl.runtime.optim import make_differentiable
    except ModuleNotFoundError as err:  # pragma: no cover - the optim module ships with unroll
        raise MLOError("unrolled (differentiable) steps need mlodsl.runtime.optim") from err
    if problem._fast is None:
        problem._fast = problem.trainable_parameters()
        problem._diffopt = make_differentiable(problem.optimizer, problem.trainable_parameters())
    grads = engine.average_across_ranks(grads)
    clip = problem.grad_clip if problem.grad_clip is not None else problem.config.gradient_clipping
    if clip and clip > 0:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
        grads = [g * scale for g in grads]
    if not engine.allow_step(problem, loss, grads):
        return
    problem._fast = problem._diffopt.step(problem._fast, grads)
    _scheduler_step(engine, problem)


def end_unroll_window(problem) -> None:
    """Write a problem's fast weights back to its live parameters and drop their graph."""
    if problem._fast is None:
        return
    params = problem.trainable_parameters()
    with torch.no_grad():
        for p, f in zip(params, problem._fast):
            if f is not p:
                p.copy_(f)
    problem._diffopt.write_back()
    problem._fast = None
    problem._diffopt = None
    _after_update(problem, params)
