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
  optimizer update) keeps no graph: its backward recomputes it from its inputs (fast weights,
  optimizer state, the uppers' parameters). Only every ``ceil(sqrt(T))``-th step keeps its
  inputs; the backward of a step whose inputs were dropped replays the steps since the last
  kept one (values only, once per segment). Memory between steps: ``O(sqrt(T))`` states
  instead of ``T`` graphs; time: about two more step evaluations per step. Buffers
  (BatchNorm statistics) advance once: recomputations evaluate the loss with the buffers
  protected, and the RNG state of each step is restored, so dropout draws the same masks.
  The step's hyperparameters are frozen at the time it was taken, so a scheduler stepping later
  does not change the recomputation. Checkpointed steps skip the engine's divergence guard.

References: Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through
Reversible Learning", ICML 2015; Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning", ICML
2017 (first-order variant, section 5.2); Chen et al., "Training Deep Nets with Sublinear Memory
Cost", 2016 (checkpointing).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

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

    A small recompute-in-backward ``autograd.Function`` (:class:`_Recompute`) over a per-window
    :class:`_Tape`: the forward keeps no graph, the backward recomputes the step from its inputs
    (kept, or replayed from the last kept step) and differentiates it. Its inputs are therefore
    *every* tensor the
    step is differentiated with respect to: the fast weights, the optimizer's carried state
    (momentum, moments) and the other problems' current parameters (the upper's
    hyperparameters); during the step the other problems are shown these inputs as their
    current tensors. (``torch.utils.checkpoint`` does not fit: its non-reentrant variant
    recomputes each step already during its own forward, because the step's inner
    ``autograd.grad`` unpacks the saved tensors, and its reentrant variant refuses
    ``autograd.grad``.)
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
    # What the recomputation closure may hold: nothing that leads to this step's outputs (the
    # optimizer's newest state, the problem's fast weights), or the closure, kept alive by the
    # outputs' graph, would keep that graph alive in turn (a cycle gc cannot see through
    # autograd): state *layouts* and a stateless copy of the update rule only.
    rule = diffopt.rule()
    layout = [{k: (_TENSOR if isinstance(v, torch.Tensor) else v) for k, v in sorted(st.items())}
              for st in states]
    clip = problem.grad_clip if problem.grad_clip is not None else problem.config.gradient_clipping
    others = [o for o in engine.problems.values() if o is not problem]
    context = [list(o.current_parameters()) for o in others]
    state_flat = [t for st in states for t in _state_tensors(st)]
    sizes = (len(problem._fast), len(state_flat), [len(c) for c in context])
    calls = {"n": 0}
    record: dict[str, Any] = {}

    def body(*args: torch.Tensor, replay: bool = False):
        # The first call is the step itself; later calls recompute it, advancing no buffers or
        # counters. ``replay``: values only (rebuilding a dropped step's inputs), so the
        # gradient needs no graph.
        first = calls["n"] == 0
        calls["n"] += 1
        n_fast, n_state, n_ctx = sizes
        fast, rest = list(args[:n_fast]), list(args[n_fast:])
        flat_state, rest = rest[:n_state], rest[n_state:]
        it = iter(flat_state)
        in_states = [{k: (next(it) if v is _TENSOR else v) for k, v in st.items()}
                     for st in layout]
        saved = [(o, o._fast) for o in others] + [(problem, problem._fast)]
        try:
            for o, n in zip(others, n_ctx):
                o._fast, rest = list(rest[:n]), rest[n:]
            problem._fast = fast
            with torch.enable_grad():
                total = None
                for current in batches:
                    loss, metrics = engine.evaluate_loss(problem, current, own_step=first,
                                                         with_metrics=True)
                    grads = total_gradient(engine, problem, loss, create_graph=not replay)
                    if accum > 1:
                        grads = [g / accum for g in grads]
                    total = grads if total is None else [a + b for a, b in zip(total, grads)]
                    if first:
                        record["loss"], record["metrics"] = loss.detach(), metrics
                average = getattr(engine, "average_across_ranks", None)
                if average is not None:
                    total = average(total)
                if clip and clip > 0:
                    norm = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in total]))
                    total = [g * torch.clamp(clip / (norm + 1e-6), max=1.0) for g in total]
                new, new_states = rule.apply(fast, total, in_states, groups)
        finally:
            for o, f in saved:
                o._fast = f
        if first:  # the layout only: holding the tensors would keep this step's graph alive
            record["states"] = [{k: (None if isinstance(v, torch.Tensor) else v)
                                 for k, v in st.items()} for st in new_states]
            record["keys"] = [_state_keys(st) for st in new_states]
        return (*new, *[t for st in new_states for t in _state_tensors(st)])

    tape = getattr(diffopt, "_checkpoint_tape", None)
    if tape is None:
        tape = diffopt._checkpoint_tape = _Tape(_segment_length(engine, problem.name))
    own = [*problem._fast, *state_flat]
    inputs = [*own, *(t for c in context for t in c)]
    out = _Recompute.apply(tape, tape.add(body, len(own), inputs), *inputs)
    n_params = sizes[0]
    new_params = list(out[:n_params])
    # Re-attach the returned state tensors (the checkpoint's outputs carry the graph).
    it = iter(out[n_params:])
    new_states = []
    for st, keys in zip(record["states"], record["keys"]):
        st = dict(st)
        for key in keys:
            st[key] = next(it)
        new_states.append(st)
    loss = record["loss"]
    engine.watch_finite(problem, loss)
    problem.last_loss, problem.last_metrics = loss, record["metrics"]
    problem._count += 1
    problem._fast = new_params
    diffopt.state = new_states
    from mlodsl.runtime.stepping import _scheduler_step
    _scheduler_step(engine, problem)
    return loss


_TENSOR = object()  # marks where a state layout takes a tensor


def _segment_length(engine, name: str) -> int:
    """Keep the inputs of every ``k``-th step of a window of ``T``: ``k = ceil(sqrt(T))``."""
    window = max([e.every for e in engine.edges.values() if e.lower == name] or [1])
    return max(1, math.ceil(math.sqrt(window)))


class _Tape:
    """The checkpointed steps of one unrolled window, in order.

    Step ``i`` keeps its own inputs (fast weights, optimizer state) only when ``i % every ==
    0``; the others are rebuilt in the backward by replaying the steps from the nearest kept
    one (values only, no graph), once per segment: sqrt(T) stored states and at most sqrt(T)
    rebuilt ones instead of T (Chen et al. 2016, section 4). The other problems' tensors the
    steps read are kept for every step (they are the uppers' parameters, alive anyway).

    Everything is held detached: the tape is reachable from the steps' graph (through each
    node's ``ctx``), so it must not hold a tensor that leads back to that graph.
    """

    def __init__(self, every: int):
        self.every = every
        self.steps: list[dict] = []
        self.cache: dict[int, list[torch.Tensor]] = {}

    def add(self, fn, n_own: int, inputs: list[torch.Tensor]) -> int:
        i = len(self.steps)
        keep = i % self.every == 0
        self.steps.append({
            "fn": fn, "n_own": n_own, "flags": [x.requires_grad for x in inputs],
            "own": [x.detach() for x in inputs[:n_own]] if keep else None,
            "context": [x.detach() for x in inputs[n_own:]],
            "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                         and torch.cuda.is_initialized() else None)})
        return i

    def inputs(self, i: int) -> list[torch.Tensor]:
        """Step ``i``'s inputs (detached), replaying from the nearest kept step if needed."""
        step = self.steps[i]
        own = step["own"] if step["own"] is not None else self.cache.pop(i, None)
        if own is None:
            j = i
            while self.steps[j]["own"] is None and j not in self.cache:
                j -= 1
            own = self.steps[j]["own"] if self.steps[j]["own"] is not None else self.cache[j]
            for m in range(j, i):  # replay steps j .. i-1, caching what steps j+1 .. i-1 need
                rec = self.steps[m]
                args = [x.detach().requires_grad_(f) for x, f in
                        zip([*own, *rec["context"]], rec["flags"])]
                with _rng_at(rec):
                    out = rec["fn"](*args, replay=True)
                own = [o.detach() for o in out]
                if m + 1 < i:
                    self.cache[m + 1] = own
        return [*own, *step["context"]]


@contextlib.contextmanager
def _rng_at(step: dict):
    cuda_rng = step["cuda_rng"]
    devices = list(range(len(cuda_rng))) if cuda_rng is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(step["rng"])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        yield


class _Recompute(torch.autograd.Function):
    """Step ``i`` of a :class:`_Tape`, whose graph is dropped after the forward and rebuilt
    in the backward from the step's inputs (kept or replayed).

    The RNG state is restored for every recomputation, so dropout draws the same masks.
    """

    @staticmethod
    def forward(ctx, tape, i, *inputs):
        ctx.tape, ctx.i = tape, i
        with torch.enable_grad():
            out = tape.steps[i]["fn"](*[x.detach().requires_grad_(x.requires_grad)
                                        for x in inputs])
        return tuple(o.detach() for o in out)

    @staticmethod
    def backward(ctx, *grad_out):
        step = ctx.tape.steps[ctx.i]
        inputs = [x.detach().requires_grad_(f)
                  for x, f in zip(ctx.tape.inputs(ctx.i), step["flags"])]
        with _rng_at(step), torch.enable_grad():
            out = step["fn"](*inputs)
        pairs = [(o, g) for o, g in zip(out, grad_out) if o.requires_grad and g is not None]
        wanted = [x for x in inputs if x.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted,
                                         grad_outputs=[g for _, g in pairs],
                                         allow_unused=True) if pairs and wanted else [])
        return (None, None, *[next(grads) if x.requires_grad else None for x in inputs])


def _state_keys(state: dict) -> list[str]:
    return sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))


def _state_tensors(state: dict) -> list[torch.Tensor]:
    return [state[k] for k in _state_keys(state)]
