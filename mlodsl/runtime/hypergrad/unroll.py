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
  optimizer update) keeps no graph: the forward computes its values only, and its backward
  recomputes it from its inputs (fast weights, optimizer state, the uppers' parameters) with a
  graph. The inputs themselves are kept for a few steps only, placed by binomial ("revolve")
  checkpointing: the backward of a step whose inputs were dropped replays the steps since the
  nearest kept one (values only), keeping a new snapshot where the schedule says, and each
  snapshot is dropped when its step's backward is done. The number of snapshots is the
  smallest whose schedule replays at most ``REPLAY_BUDGET`` (2) steps per step: ``T = 20``
  holds the live state plus 2 snapshots, ``T = 100`` plus 5 (``O(log T)`` growth),
  instead of ``T`` graphs; time: one values-only evaluation plus about two replays per step
  on top of plain unrolling. The ``T`` batches are held either way. Buffers
  (BatchNorm statistics) advance once: recomputations evaluate the loss with the buffers
  protected, and the RNG state of each step is restored, so dropout draws the same masks.
  The step's hyperparameters are frozen at the time it was taken, so a scheduler stepping later
  does not change the recomputation. Checkpointed steps skip the engine's divergence guard.

References: Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter Optimization through
Reversible Learning", ICML 2015; Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning", ICML
2017 (first-order variant, section 5.2); Chen et al., "Training Deep Nets with Sublinear Memory
Cost", 2016 (checkpointing); Griewank and Walther, "Algorithm 799: Revolve", ACM TOMS
2000 (binomial checkpointing).
"""
from __future__ import annotations

import contextlib
import functools
import math
import torch

from mlodsl.runtime.hypergrad.registry import HypergradRequest, register

__all__ = ["unroll", "check_nesting", "new_tape", "run_checkpointed", "REPLAY_BUDGET"]


@register("unroll")
def unroll(request: HypergradRequest, first_order: bool = False, checkpoint: bool = False
           ) -> list[None]:
    """Nothing beyond autograd through the recorded steps (see module docstring)."""
    return [None] * len(request.target_params())


def check_nesting(engine) -> None:
    """Refuse a checkpointed window below another level whose steps are unrolled.

    A checkpointed step keeps no graph: its backward recomputes it and differentiates it
    once, detached from the step's inputs. An unrolled (second-order) level above it takes
    its own steps with a graph *through* that backward, and the level above that needs the
    derivative of it: a second derivative through the recomputation, which it does not give.
    Without the check, those paths would silently contribute nothing.
    """
    from mlodsl.diagnostics import MLOError

    for name in engine.window_consumers.unrolled:
        first_order, checkpointed = engine.unroll_settings(name)
        if not checkpointed or first_order:
            continue
        for above in engine.window_consumers.above(name):
            if engine.is_unrolled(above) and not engine.unroll_settings(above)[0]:
                raise MLOError(
                    f"unroll(checkpoint=True) into '{name}' cannot be nested under the "
                    f"unrolled steps of '{above}': the hypergradient above '{above}' would "
                    f"need a second derivative through the recomputed steps of '{name}'",
                    hint=f"drop checkpoint=True on the edge into '{name}', or unroll "
                    f"'{above}' with first_order=True (or an implicit method)")


def new_tape(length: int) -> "_Tape":
    """An empty tape for a window of ``length`` checkpointed steps (binomial snapshots)."""
    return _Tape(length)


def run_checkpointed(tape: "_Tape", body, n_own: int, inputs: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, ...]:
    """Run one checkpointed step ``body(*inputs)`` on ``tape``; return its outputs.

    ``body(*inputs, replay=False)`` computes the step from ``inputs``: the step's own state
    (its first ``n_own`` tensors: fast weights and optimizer state, kept or replayed by the
    tape) and the tensors it reads from other problems (kept for every step). With
    ``replay=True`` it computes values only. The outputs carry no graph of the step: the
    upper's backward recomputes it from its inputs with one (:class:`_Recompute`). A small
    recompute-in-backward ``autograd.Function`` because ``torch.utils.checkpoint`` does not
    fit: its non-reentrant variant recomputes each step already during its own forward (the
    step's inner ``autograd.grad`` unpacks the saved tensors), and its reentrant variant
    refuses ``autograd.grad``.
    """
    return _Recompute.apply(tape, tape.add(body, n_own, inputs), *inputs)


#: Replayed steps allowed per step of the window, on average: the fewest snapshot slots whose
#: optimal schedule replays at most ``REPLAY_BUDGET * T`` steps are used. A replay (values
#: only) costs about a plain training step, a few times less than the recomputation with graph
#: every step's backward does anyway; at 2, ``T = 20`` keeps 2 snapshots and replays 29 steps,
#: about the time ``sqrt(T)`` segments took (15 replays, but a forward that built each step's
#: graph) with a third of their snapshots. Measurements: ``benchmarks/README.md``.
REPLAY_BUDGET = 2.0


@functools.lru_cache(maxsize=4096)
def _replays(n: int, slots: int) -> int:
    """Fewest steps to replay for the backward of ``n`` consecutive steps, given the first
    one's inputs and ``slots`` free slots for more snapshots (binomial checkpointing).

    The optimum of the recursion "keep step ``m``'s inputs, finish ``m .. n-1`` with one slot
    fewer, then ``0 .. m-1`` with the slot back" (``R(n, c) = min_m m + R(n-m, c-1) + R(m, c)``,
    ``R(n, 0) = n (n-1) / 2``) has a closed form: with ``s = c + 1`` snapshots counting the
    first one and ``r`` the least integer with ``C(s + r, s) >= n``, ``R = r n - C(s + r, s + 1)``
    (Griewank and Walther, "Algorithm 799: Revolve", ACM TOMS 2000).
    """
    if n <= 1:
        return 0
    s, r = slots + 1, 0
    while math.comb(s + r, s) < n:
        r += 1
    return r * n - math.comb(s + r, s + 1)


@functools.lru_cache(maxsize=64)
def _forward_replays(length: int, slots: int) -> tuple[int, ...]:
    """``W[n]`` for ``n = 0 .. length``: as :func:`_replays`, but the forward is still to pass
    over the ``n`` steps, so the snapshots it keeps on its way cost no replay:
    ``W(n, c) = min_m W(n-m, c-1) + R(m, c)``, ``W(n, 0) = R(n, 0)``."""
    if slots == 0:
        return tuple(_replays(n, 0) for n in range(length + 1))
    below = torch.tensor(_forward_replays(length, slots - 1), dtype=torch.int64)
    rows = torch.tensor([_replays(m, slots) for m in range(length + 1)], dtype=torch.int64)
    n = torch.arange(length + 1).unsqueeze(1)
    m = torch.arange(1, length + 1).unsqueeze(0)
    # cost[n, m] = W(n-m, c-1) + R(m, c) for the split points 1 <= m < n
    cost = below[(n - m).clamp(min=0)] + rows[m]
    cost = cost.masked_fill(m >= n, torch.iinfo(torch.int64).max)
    out = cost.min(dim=1).values
    out[:2] = 0
    return tuple(out.tolist())


def _slots_for(length: int, budget: float = REPLAY_BUDGET) -> int:
    """The fewest snapshot slots whose schedule replays at most ``budget * length`` steps."""
    slots = 0
    while _forward_replays(length, slots)[length] > budget * length and slots < length - 1:
        slots += 1
    return slots


@functools.lru_cache(maxsize=65536)
def _split(n: int, slots: int, forward: int = 0) -> int:
    """Where to keep the next snapshot in a span of ``n >= 2`` steps with ``slots >= 1`` free
    slots: the optimal ``m`` of :func:`_replays`, or with ``forward`` (the window's length,
    ``>= n``) of :func:`_forward_replays`."""
    if forward:
        below = _forward_replays(forward, slots - 1)
        cost = [below[n - m] + _replays(m, slots) for m in range(1, n)]
    else:
        cost = [m + _replays(n - m, slots - 1) + _replays(m, slots) for m in range(1, n)]
    return 1 + cost.index(min(cost))


class _Tape:
    """The checkpointed steps of one unrolled window, in order, with their snapshots.

    A snapshot is a step's own inputs (fast weights, optimizer state). The window's first step
    always keeps its inputs (the live parameters and the torch optimizer's state: no copy);
    at most ``slots`` other snapshots are alive at any time, placed by binomial checkpointing
    (Griewank and Walther 2000, :func:`_replays`): the forward keeps a few, the backward
    of a step whose inputs are not kept replays the steps since the nearest snapshot (values
    only, no graph), keeping new snapshots on the way where the schedule says, and a snapshot
    is dropped as soon as its step's backward is done. With ``slots`` chosen by
    :func:`_slots_for`, ``T = 20`` holds 2 snapshots at most (and replays 29 steps) where
    ``sqrt(T)`` segments held 6 (3 kept, 3 cached while replaying a segment).

    The other problems' tensors the steps read are kept for every step (they are the uppers'
    parameters, alive anyway). A second backward through the window (``retain_graph``) finds
    the snapshots gone and replays from the first step again: slower, same values.

    Everything is held detached: the tape is reachable from the steps' graph (through each
    node's ``ctx``), so it must not hold a tensor that leads back to that graph.
    """

    def __init__(self, length: int, slots: int | None = None):
        self.length = max(int(length), 1)
        self.slots = _slots_for(self.length) if slots is None else slots
        self.steps: list[dict] = []
        self.snapshots: dict[int, list[torch.Tensor]] = {}
        # The forward's snapshots: the rightmost branch of the schedule, free to keep while
        # the forward passes (a window longer than planned repeats the plan).
        self.plan, at, n, free = {0}, 0, self.length, self.slots
        while free > 0 and n > 1:
            m = _split(n, free, forward=self.length)
            at, n, free = at + m, n - m, free - 1
            self.plan.add(at)

    def add(self, fn, n_own: int, inputs: list[torch.Tensor]) -> int:
        i = len(self.steps)
        if i % self.length in self.plan:
            self.snapshots[i] = [x.detach() for x in inputs[:n_own]]
        self.steps.append({
            "fn": fn, "n_own": n_own, "flags": [x.requires_grad for x in inputs],
            "context": [x.detach() for x in inputs[n_own:]],
            "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                         and torch.cuda.is_initialized() else None)})
        return i

    def inputs(self, i: int) -> list[torch.Tensor]:
        """Step ``i``'s inputs (detached), replaying from the nearest snapshot if needed."""
        j = max(k for k in self.snapshots if k <= i)
        own = self.snapshots[j]
        while j < i:
            free = self.slots - sum(1 for k in self.snapshots if k != 0)
            n = i + 1 - j
            # With no free slot, replay straight to step i; else to the schedule's next
            # snapshot, keep it, and go on from there with one slot fewer.
            stop = i if free <= 0 else j + _split(n, free)
            for m in range(j, stop):
                rec = self.steps[m]
                args = [x.detach().requires_grad_(f) for x, f in
                        zip([*own, *rec["context"]], rec["flags"])]
                with _rng_at(rec):
                    out = rec["fn"](*args, replay=True)
                own = [o.detach() for o in out]
            j = stop
            if free > 0:
                self.snapshots[j] = own
        return [*own, *self.steps[i]["context"]]

    def done(self, i: int) -> None:
        """Step ``i``'s backward is over: its snapshot is not needed any more (the first
        step's aliases the live parameters and stays, for a second backward)."""
        if i != 0:
            self.snapshots.pop(i, None)


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
                                        for x in inputs], replay=True)
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
        ctx.tape.done(ctx.i)
        return (None, None, *[next(grads) if x.requires_grad else None for x in inputs])
