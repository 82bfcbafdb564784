"""``unroll(first_order=False, checkpoint=False)``: iterative differentiation through the lower's steps.

The lower takes its last ``T`` steps (``T = every`` / ``Config.unroll_steps``) *differentiably*
on fast weights, with a differentiable copy of its torch optimizer (:mod:`mlodsl.runtime.optim`)::

    w_0 = live parameters,   w_{t+1} = Phi(w_t, grad_w g(w_t, lambda; batch_t), state_t)

and the upper's gradient is the exact derivative of ``f(w_T(lambda), lambda)``:

    df/dlambda = d_lambda f + sum_t (dw_T/dw_{t+1}) (dPhi/dlambda at t) ... = autograd(f(w_T))

``w_T`` is a function of ``lambda`` recorded on the autograd tape while the lower stepped
(:func:`mlodsl.runtime.stepping.take_step` builds its gradients with ``create_graph``), so the
upper's own backward pass already contains every path through the unrolled steps. This
method therefore adds nothing *on top* of autograd: :mod:`.chain` treats a lower with live fast
weights as an explicit part of the graph and never asks a method to push its cotangent (doing
so would count the unrolled paths twice). It is called only when the window has closed
(the lower's steps were consumed by another upper), and then contributes nothing.
As ``T`` grows with the lower converging, the result approaches the implicit hypergradient.

Arguments:

* ``first_order``: drop the second-order terms - the lower's gradients are taken without a graph,
  so ``w_T`` depends on the upper only through ``w_0`` (first-order MAML). ``Config.first_order``
  maps to it, True by default in the Python API as in Betty 0.2.1; ``unroll()`` in ``.mlo``
  defaults to False.
* ``checkpoint``: activation checkpointing. Each differentiable step (loss, gradient with graph,
  optimizer update) runs under ``torch.utils.checkpoint`` (non-reentrant), so only the fast
  weights and optimizer state between steps are kept; the step's activations and its
  double-backward graph are recomputed during the upper's backward (about one more step of
  compute per step, memory no longer growing with activations x ``T``). Buffers (BatchNorm
  statistics) advance once: the recomputation evaluates the loss with the buffers protected.
  The step's hyperparameters are frozen at the time it was taken, so a scheduler stepping later
  does not change the recomputation. Checkpointed steps skip the engine's divergence guard.

References: Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through
Reversible Learning", ICML 2015; Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning", ICML
2017 (first-order variant, section 5.2); Chen et al., "Training Deep Nets with Sublinear Memory
Cost", 2016 (checkpointing).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from mlodsl.methods import METHODS
from mlodsl.runtime.hypergrad.registry import HypergradRequest, register

__all__ = ["unroll", "unroll_settings", "take_checkpointed_step"]


@register("unroll")
def unroll(request: HypergradRequest, first_order: bool = False, checkpoint: bool = False
           ) -> list[None]:
    """Nothing beyond autograd through the recorded steps (see module docstring)."""
    return [None] * len(request.target_params())


def unroll_settings(engine, name: str) -> tuple[bool, bool]:
    """``(first_order, checkpoint)`` for the differentiable steps of problem ``name``.

    Read from the ``unroll`` edges into it (second order wins if two edges disagree, and
    checkpointing is used if any edge asks for it); an ``IterativeProblem`` whose edges chose
    another method takes the defaults.
    """
    specs = [e for e in engine.edges.values() if e.lower == name and e.method == "unroll"]
    if not specs:
        defaults = METHODS["unroll"].bind({})
        return defaults["first_order"], defaults["checkpoint"]
    return (all(e.args.get("first_order", False) for e in specs),
            any(e.args.get("checkpoint", False) for e in specs))


def take_checkpointed_step(engine, problem, batch: Any = None) -> torch.Tensor:
    """One differentiable step of ``problem`` under activation checkpointing.

    Same order as :func:`mlodsl.runtime.stepping.take_step` (batches, loss, total gradient,
    clipping, optimizer update, scheduler), with everything from the loss to the update
    recomputed in the upper's backward instead of stored.
    """
    from mlodsl.runtime.hypergrad.chain import total_gradient
    from mlodsl.runtime.optim import make_differentiable

    accum = max(int(getattr(problem, "grad_accum", None) or
                    problem.config.gradient_accumulation), 1)
    batches = [problem.next_batch() if batch is None else batch for _ in range(accum)]
    if problem._fast is None:
        problem._fast = problem.trainable_parameters()
        problem._diffopt = make_differentiable(problem.optimizer, problem.trainable_parameters())
    diffopt = problem._diffopt
    states, groups = diffopt.state, diffopt.snapshot_groups()
    clip = problem.grad_clip if problem.grad_clip is not None else problem.config.gradient_clipping
    calls = {"n": 0}
    record: dict[str, Any] = {}
    n_params = len(problem._fast)

    def body(*fast: torch.Tensor):
        first = calls["n"] == 0  # the recomputation must not advance buffers or counters
        calls["n"] += 1
        saved = problem._fast
        problem._fast = list(fast)
        try:
            total = None
            for current in batches:
                loss, metrics = engine.evaluate_loss(problem, current, own_step=first,
                                                     with_metrics=True)
                grads = total_gradient(engine, problem, loss, create_graph=True)
                if accum > 1:
                    grads = [g / accum for g in grads]
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
                if first:
                    record["loss"], record["metrics"] = loss, metrics
            average = getattr(engine, "average_across_ranks", None)
            if average is not None:
                total = average(total)
            if clip and clip > 0:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in total]))
                total = [g * torch.clamp(clip / (norm + 1e-6), max=1.0) for g in total]
            new, new_states = diffopt.apply(list(fast), total, states, groups)
        finally:
            problem._fast = saved
        if first:
            record["states"] = new_states
        flat = [t for s in new_states for t in _state_tensors(s)]
        return (*new, *flat)

    out = _torch_checkpoint(body, *problem._fast, use_reentrant=False)
    new_params = list(out[:n_params])
    # Re-attach the returned state tensors (the checkpoint's outputs carry the graph).
    it = iter(out[n_params:])
    new_states = []
    for s in record["states"]:
        s = dict(s)
        for key in _state_keys(s):
            s[key] = next(it)
        new_states.append(s)
    loss = record["loss"]
    engine.watch_finite(problem, loss)
    problem.last_loss, problem.last_metrics = loss, record["metrics"]
    problem._count += 1
    problem._fast = new_params
    diffopt.state = new_states
    from mlodsl.runtime.stepping import _scheduler_step
    _scheduler_step(engine, problem)
    return loss


def _state_keys(state: dict) -> list[str]:
    return sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))


def _state_tensors(state: dict) -> list[torch.Tensor]:
    return [state[k] for k in _state_keys(state)]
