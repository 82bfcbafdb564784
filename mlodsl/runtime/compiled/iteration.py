"""One MLO iteration as one function of the training state, built with torch.func.

For one *pattern* of the schedule (the problems one engine iteration steps, in order, e.g.
``("classifier", "hpo")``), :class:`CapturedIteration` is a callable

    iteration(params, states, lrs, steps, context) -> outputs

whose arguments are the whole training state that the iteration reads: every problem's
trainable parameters (``params[name]``, a list of tensors), the optimizer state of every
stepping problem (``states[name]``, per parameter the tensors ``torch.optim`` keeps under its
own keys), one learning-rate tensor per param group (``lrs[name]``), the batches of every step
(``steps[name]``: ``grad_accum`` batches) and the last batch of every lower that does not step
in this pattern but whose loss a hypergradient evaluates (``context[name]``). Data loading,
schedulers and counters stay outside.

Inside, it does what the eager engine does, in the same order and with the same formulas
(:mod:`mlodsl.runtime.stepping`, :mod:`mlodsl.runtime.hypergrad.chain` and the methods), but
only with ``torch.func`` transforms (``functional_call``, ``grad``, ``jvp``, ``vjp``), which
torch.compile traces into one graph (``torch.autograd.grad`` would break it):

1. a problem's loss is its own ``training_step`` run under ``functional_call`` of a module
   holding every problem's module, with every problem's parameters taken from the state;
2. its total gradient: ``grad`` of the loss in its own and every lower's parameters, then the
   cotangents pushed bottom-up through each lower by the edge's method (``darts``, ``sama``,
   ``neumann``, ``cg``, ``first_order``), summing over all paths of the DAG; a lower unrolled
   (``unroll``) is stepped again inside the differentiated function instead, from its window's
   start state over the window's batches (one step with ``every 1``, T with ``every T``), so
   the derivative through its updates is part of the gradient. The lower's steps inside a
   longer window (a pattern without the upper) step the window's fast weights and return them
   (``outputs["window:NAME"]``) instead of writing the live tensors, which keep the start;
3. ``grad_accum`` averages, ``grad_clip`` clips by the total norm, the functional optimizer
   (:mod:`mlodsl.runtime.compiled.optimizers`) updates, ``param_callback``/``after_step`` run
   on the new tensors.

At the end the new parameters and optimizer states are copied into the live tensors (in place,
so a compiled graph fuses the copies into its last kernels): checkpoints, validation, logging
and the divergence guard see exactly what the eager engine would have left. Called without
torch.compile the same function runs eagerly, which is how the tests compare it with the engine.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp

from mlodsl.runtime.compiled.optimizers import FunctionalOptimizer, NotCapturable
from mlodsl.runtime.vectors import norm as _vector_norm
from mlodsl.runtime.hypergrad.cg import conjugate_gradient
from mlodsl.runtime.hypergrad.neumann import neumann_inverse_hvp
from mlodsl.runtime.problem import Problem, call_param_callback

__all__ = ["CapturedIteration", "CAPTURED_METHODS", "trainable_names"]

Params = dict[str, list[torch.Tensor]]


def trainable_names(problem: Problem) -> list[str]:
    """The names of ``problem``'s trainable parameters, in ``trainable_parameters()`` order."""
    return [n for n, p in problem.module.named_parameters() if p.requires_grad]


class _Holder(nn.Module):
    """Every problem's module under one root, so one ``functional_call`` re-parametrises all.

    ``forward(name, batch)`` runs problem ``name``'s own ``compute_loss``: user code sees the
    substituted tensors however it reaches a module (``self.module``, ``self.hpo()``, ...).
    """

    def __init__(self, problems: dict[str, Problem]):
        super().__init__()
        self.mods = nn.ModuleDict({n: p.module for n, p in problems.items()})
        self._problems = problems

    def forward(self, name: str, batch: Any):
        return self._problems[name].compute_loss(batch)


def unroll_obstacle(engine, lower: str) -> str | None:
    """Why the ``unroll`` window of ``lower`` cannot be differentiated inside one captured
    iteration (a one-step window) or over the iterations of a longer one, or None: no warm-up,
    a lower with no lowers of its own, one batch per step, its only edge in, and no level
    above its upper."""
    edges = [e for e in engine.edges.values() if e.lower == lower]
    if len(edges) != 1 or edges[0].warmup:
        return "an unroll window with a warm-up (or under two uppers) runs eagerly"
    problem = engine.problems[lower]
    if engine.descendants_bottom_up(lower) or problem.accumulation_steps(unrolled=True) != 1:
        return "unroll through a lower with lowers or grad_accum runs eagerly"
    if len(engine.window_consumers.above(lower)) > 1:
        # nested: the window stays open until every level above has stepped (consumers.py)
        return "an unroll window under more than one level stays open until the top steps"
    return None


class _Step:
    """What one problem's step needs, read from the engine when the pattern is captured."""

    def __init__(self, engine, name: str):
        problem = engine.problems[name]
        self.name = name
        unrolled = engine.is_unrolled(name)
        self.accum = problem.accumulation_steps(unrolled=unrolled)
        if problem.steps_per_update(unrolled=unrolled) != 1:
            raise NotCapturable("Config.gradient_accumulation keeps gradients between steps "
                                "(Betty's accumulation)")
        clip = problem.clip_norm()
        self.clip = float(clip) if clip and clip > 0 else None
        self.optimizer = FunctionalOptimizer(problem.optimizer, problem.trainable_parameters())
        self.callbacks: list[Callable] = []
        if type(problem).param_callback is not Problem.param_callback \
                or "param_callback" in vars(problem):
            self.callbacks.append(functools.partial(call_param_callback, problem))
        if problem.after_step is not None:
            self.callbacks.append(problem.after_step)
        self.below = list(engine.descendants_bottom_up(name))
        scope = set(self.below) | {name}
        # per lower, bottom-up: (lower, targets, method, arguments)
        self.pushes = []
        for lower in self.below:
            method, args = engine.method_for(name, lower)
            if method == "unroll":
                why = unroll_obstacle(engine, lower)
                if why:
                    raise NotCapturable(why)
            elif method not in CAPTURED_METHODS:
                raise NotCapturable(f"method '{method}' (edge into '{lower}') runs eagerly")
            if method == "cg" and args.get("tol", 0) > 0:
                raise NotCapturable("cg(tol > 0) decides on the host when to stop")
            self.pushes.append((lower, engine.ancestors_in(lower, scope), method, dict(args)))


class CapturedIteration:
    """The pure function of one schedule pattern (see the module docstring).

    Args:
        engine: the engine whose problems, edges and settings are read (once, here).
        pattern: the problems one iteration steps, in order.

    Raises :class:`NotCapturable` when a piece of the program has no functional form.
    """

    def __init__(self, engine, pattern: Sequence[str]):
        self.pattern = tuple(pattern)
        self.problems = dict(engine.problems.items())
        self.holder = _Holder(self.problems)
        self.keys = {n: [f"mods.{n}.{k}" for k in trainable_names(p)]
                     for n, p in self.problems.items()}
        self.steps = {n: _Step(engine, n) for n in self.pattern}
        # lowers whose last batch a method evaluates but that do not step in this pattern
        self.context = sorted({lower for s in self.steps.values() for lower, *_ in s.pushes
                               if lower not in self.pattern}, key=list(self.problems).index)
        # lowers an upper of this pattern unrolls through (one-step windows): their step is
        # recomputed inside the upper's gradient as a function of the uppers' parameters
        self.unrolled = {lower: engine.unroll_settings(lower)[0]
                         for s in self.steps.values() for lower, _, m, _ in s.pushes
                         if m == "unroll"}
        for lower in self.unrolled:
            if lower not in self.steps:
                raise NotCapturable(f"the unrolled lower '{lower}' does not step in this "
                                    "iteration")
        # windows longer than one step: ``inside`` lowers step on the window's fast weights
        # (the result goes back to the window, not to the live tensors); ``closing`` lowers
        # take their window's last step here, and their upper replays the whole window from
        # its start state (states["window:LOWER"]) with its batches (steps[LOWER], all of them)
        self.windows = {n: engine.window_length(n) for n in self.pattern
                        if engine.is_unrolled(n) and engine.window_length(n) > 1}
        for n in self.windows:
            why = unroll_obstacle(engine, n)
            if why:
                raise NotCapturable(why)
        self.closing = {n for n in self.windows if n in self.unrolled}
        self.inside = set(self.windows) - self.closing
        self.sama_optimizers: dict[str, FunctionalOptimizer] = {}
        for s in self.steps.values():
            for lower, _, method, _ in s.pushes:
                if method == "sama" and _is_adam(self.problems[lower].optimizer):
                    self.sama_optimizers[lower] = FunctionalOptimizer(
                        self.problems[lower].optimizer,
                        self.problems[lower].trainable_parameters())

    # -- what the caller passes ------------------------------------------------------------------
    def inputs(self, batches: dict[str, list], window_lrs: dict | None = None) -> tuple:
        """The arguments of :meth:`__call__` from the live state and this iteration's batches.

        ``window_lrs``: per lower whose window this iteration closes, the learning rates of each
        of the window's steps (``batches`` holds the window's batches; by default, the lrs now).
        """
        params = {n: [p.detach() for p in prob.trainable_parameters()]
                  for n, prob in self.problems.items()}
        states = {n: s.optimizer.states() for n, s in self.steps.items()}
        for lower, fo in self.sama_optimizers.items():
            states.setdefault(f"sama:{lower}", fo.states())
        lrs = {n: s.optimizer.learning_rates() for n, s in self.steps.items()}
        for lower, fo in self.sama_optimizers.items():
            lrs.setdefault(f"sama:{lower}", fo.learning_rates())
        context = {n: self.problems[n].cur_batch for n in self.context}
        for n in self.windows:  # a window's fast weights (when open) stand for the live ones
            window = self.problems[n].unrolled_window
            if n in self.closing:
                states[f"window:{n}"] = (params[n], states[n])
                lrs[f"window:{n}"] = (window_lrs or {}).get(n) or [lrs[n]] * len(batches[n])
            if window.is_open:
                params[n] = list(window.fast)
                states[n] = self.steps[n].optimizer.from_window(window.optimizer.state)
        return params, states, lrs, batches, context

    def ready(self) -> bool:
        """Whether every optimizer state the iteration reads exists (torch's first step made it)."""
        return all(s.optimizer.ready() for s in self.steps.values()) and all(
            fo.ready() for fo in self.sama_optimizers.values())

    def signature(self) -> tuple:
        """What the function was built for: which tensors train (a frozen parameter changes
        it) and the constants baked in (hyperparameters other than learning rates)."""
        return (tuple(tuple(map(id, p.trainable_parameters())) for p in self.problems.values()),
                tuple(s.optimizer.signature() for s in self.steps.values()))

    # -- the function ------------------------------------------------------------------------------
    def __call__(self, params: Params, states: dict, lrs: dict, steps: dict, context: dict):
        """Run one iteration on the given state; write it back in place; return the outputs.

        Returns ``{name: (loss, gradient_sums or None, metrics)}`` for each stepping problem:
        its last loss (detached), per parameter the sum of its hypergradient-carrying total
        gradient (finite exactly when the gradient is: for the divergence guard) and the other
        entries of its ``training_step`` dict.
        """
        live_params, live_states = dict(params), states
        params = {n: list(v) for n, v in params.items()}
        new_states = {}
        states = dict(states)  # entries replaced as problems step (sama reads the newest)
        last_batch = dict(context)
        outputs = {}
        before = {}  # an unrolled lower's parameters and state before its step
        for name in self.pattern:
            step = self.steps[name]
            total = None
            loss = metrics = None
            for batch in (steps[name][-1:] if name in self.closing else steps[name]):
                last_batch[name] = batch
                g, loss, metrics = self._total_gradient(step, params, last_batch, states, lrs,
                                                        before)
                if step.accum > 1:
                    g = [x / step.accum for x in g]
                total = g if total is None else [a + b for a, b in zip(total, g)]
            if step.clip is not None:
                norm = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(x) for x in total]))
                coef = torch.clamp(step.clip / (norm + 1e-6), max=1.0)
                total = [x * coef for x in total]
            # for the divergence guard: a sum is finite exactly when its terms are (short of
            # overflow), and fuses with the update's pass where a norm costs a pass of its own
            sums = torch.stack([x.sum() for x in total]) if step.below else None
            if name in self.closing:
                before[name] = states[f"window:{name}"] + (steps[name],
                                                           lrs[f"window:{name}"])
            elif name in self.unrolled:
                before[name] = (params[name], states[name], steps[name])
            new, new_states[name] = step.optimizer.update(params[name], total, states[name],
                                                          lrs[name])
            # an unrolled lower's callbacks run when its window closes, after its upper
            if step.callbacks and name not in self.unrolled and name not in self.inside:
                _run_callbacks(step.callbacks, new)
            for lower, _, method, _ in step.pushes:
                if method == "unroll" and lower in before:
                    _run_callbacks(self.steps[lower].callbacks, params[lower])
            params[name] = new
            states[name] = states[f"sama:{name}"] = new_states[name]
            outputs[name] = (loss.detach(), sums, metrics)
        for name in self.inside:  # the window's new fast weights: the caller installs them
            outputs[f"window:{name}"] = (params[name], new_states[name])
        with torch.no_grad():  # write back: the live tensors now hold the new state
            for name in self.pattern:
                if name in self.inside:
                    continue
                if name in self.closing:  # the window closes: its start tensors are live
                    live_params[name] = live_states[f"window:{name}"][0]
                    live_states = {**live_states, name: live_states[f"window:{name}"][1]}
                for live, new in zip(live_params[name], params[name]):
                    live.copy_(new)
                for live, new in zip(live_states[name], new_states[name]):
                    for k, t in live.items():
                        t.copy_(new[k])
        return outputs

    # -- losses and gradients ----------------------------------------------------------------------
    def _loss(self, name: str, params: Params, batch) -> tuple[torch.Tensor, dict]:
        mapping = {}
        for n, tensors in params.items():
            mapping.update(zip(self.keys[n], tensors))
        return functional_call(self.holder, mapping, (name, batch), tie_weights=True,
                               strict=False)

    def _total_gradient(self, step: _Step, params: Params, batches: dict, states, lrs,
                        before: dict):
        """``d loss / d theta_name``, hypergradients through every lower (chain.py's order).

        A lower unrolled with second-order terms is stepped again inside the differentiated
        function, from its parameters before the step, as a function of the others: the
        derivative through its step is then part of the gradient (as on the eager tape).
        """
        name = step.name
        wrt = [name] + step.below
        replay = [lower for lower, _, m, _ in step.pushes
                  if m == "unroll" and not self.unrolled[lower] and lower in before]

        def f(sub):
            current = {**params, **sub}
            for lower in replay:
                current[lower] = self._unrolled_step(lower, current, before[lower], lrs)
            loss, metrics = self._loss(name, current, batches[name])
            return loss, (loss, metrics)

        cot, (loss, metrics) = grad(f, has_aux=True)({n: params[n] for n in wrt})
        cot = {n: list(v) for n, v in cot.items()}
        for lower, targets, method, args in step.pushes:
            if method in ("first_order", "unroll"):  # nothing, or on the tape already
                continue
            v = cot[lower]
            contrib = _METHODS[method](self, lower, targets, params, v, batches[lower],
                                       states, lrs, **args)
            for t in targets:
                cot[t] = [a + c for a, c in zip(cot[t], contrib[t])]
        return cot[name], loss, metrics

    def _unrolled_step(self, lower: str, params: Params, start, lrs) -> list:
        """The lower's window again: its updates from ``start`` (parameters, optimizer state,
        the window's batches), differentiable in every other problem's parameters in
        ``params``."""
        theta, state, batches, *per_step = start
        step = self.steps[lower]
        # each step's learning rates (a scheduler may step inside the window), or this one's
        per_step = per_step[0] if per_step else [lrs[lower]] * len(batches)
        for batch, lr in zip(batches, per_step):
            g = grad(lambda w, b=batch: self._loss(lower, {**params, lower: w}, b)[0])(theta)
            if step.clip is not None:
                coef = torch.clamp(step.clip / (_vector_norm(g) + 1e-6), max=1.0)
                g = [x * coef for x in g]
            theta, state = step.optimizer.update(theta, g, state, lr)
        return theta

    def lower_loss(self, lower: str, params: Params, batch, **replace) -> torch.Tensor:
        """The lower's loss with some problems' parameters replaced (``name=[tensors]``)."""
        return self._loss(lower, {**params, **replace}, batch)[0]

    def target_grad(self, lower: str, targets, params: Params, w, batch) -> dict:
        """``d g(w, targets) / d targets`` of the lower's loss ``g`` at parameters ``w``."""
        return grad(lambda tp: self.lower_loss(lower, params, batch, **{lower: w}, **tp))(
            {t: params[t] for t in targets})


# -- the methods, functionally (same formulas as mlodsl.runtime.hypergrad) ------------------------

def _darts(it: CapturedIteration, lower, targets, params, v, batch, states, lrs, alpha=0.01):
    w = params[lower]
    eps = alpha / (_vector_norm(v) + 1e-12)
    return _central_difference(it, lower, targets, params, w, v, eps, batch)


def _central_difference(it, lower, targets, params, w, v, eps, batch):
    g_plus = it.target_grad(lower, targets, params, [a + eps * b for a, b in zip(w, v)], batch)
    g_minus = it.target_grad(lower, targets, params, [a - eps * b for a, b in zip(w, v)], batch)
    two_eps = 2 * eps
    return {t: [(m - p) / two_eps for p, m in zip(g_plus[t], g_minus[t])] for t in targets}


def _sama(it: CapturedIteration, lower, targets, params, v, batch, states, lrs, alpha=1.0):
    w = params[lower]
    fo = it.sama_optimizers.get(lower)
    if fo is not None:  # Adam/AdamW: v preconditioned by the next step's du/dg
        g = grad(lambda x: it.lower_loss(lower, params, batch, **{lower: x}))(w)
        key = f"sama:{lower}"
        v = [pv * x for pv, x in zip(_adam_diagonal(fo, w, g, states[key], lrs[key]), v)]
    eps = alpha / (_vector_norm(v) + 1e-12)
    return _central_difference(it, lower, targets, params, w, v, eps, batch)


def _adam_diagonal(fo: FunctionalOptimizer, params, grads, states, lrs) -> list[torch.Tensor]:
    """``du/dg`` of the next Adam step, elementwise (as ``hypergrad.sama.adam_preconditioner``)."""
    return [grad(_adam_update_sum)(g, p, s, lrs[gi], fo.hyper[gi])
            for p, g, s, gi in zip(params, grads, states, fo.group_index)]


def _adam_update_sum(g, p, s, lr, h) -> torch.Tensor:
    """``sum(u(g))`` for Adam's next update ``u``: elementwise in ``g``, so its gradient is the
    Jacobian's diagonal (a zero second moment gets a zero derivative, as in the eager method)."""
    beta1, beta2 = h["betas"]
    t = s["step"] + 1
    ge = g + h["weight_decay"] * p if (h["weight_decay"] != 0 and not h["decoupled"]) else g
    m2 = beta1 * s["exp_avg"] + (1 - beta1) * ge
    v2 = beta2 * s["exp_avg_sq"] + (1 - beta2) * ge * ge
    if h["amsgrad"]:
        v2 = torch.maximum(s["max_exp_avg_sq"], v2)
    root = torch.where(v2 > 0, v2, torch.ones_like(v2)).sqrt() * (v2 > 0)
    return (lr / (1 - beta1 ** t) * m2 / (root / (1 - beta2 ** t).sqrt() + h["eps"])).sum()


def _implicit(it: CapturedIteration, lower, targets, params, v, batch, solve):
    """``-(d^2 g / d targets dw) x`` with ``x = solve(hvp, v)`` (neumann, cg)."""
    w = params[lower]

    def grad_w(x, tp=None):
        return grad(lambda y: it.lower_loss(lower, params, batch, **{lower: y}, **(tp or {})))(x)

    x = solve(lambda u: list(jvp(grad_w, (w,), (list(u),))[1]), list(v))
    _, pull = vjp(lambda tp: grad_w(w, tp), {t: params[t] for t in targets})
    (mixed,) = pull(x)
    return {t: [-c for c in mixed[t]] for t in targets}


def _neumann(it, lower, targets, params, v, batch, states, lrs, iterations=1, alpha=1.0):
    return _implicit(it, lower, targets, params, v, batch,
                     lambda hvp, b: neumann_inverse_hvp(hvp, b, iterations, alpha))


def _cg(it, lower, targets, params, v, batch, states, lrs, iterations=1, alpha=1.0, tol=0.0):
    def solve(hvp, b):
        return conjugate_gradient(lambda u: [alpha * h for h in hvp(u)],
                                  [alpha * t for t in b], iterations, 0.0)
    return _implicit(it, lower, targets, params, v, batch, solve)


def _first_order(it, lower, targets, params, v, batch, states, lrs):
    return {t: [torch.zeros_like(p) for p in params[t]] for t in targets}  # (skipped above)


def _run_callbacks(callbacks, params) -> None:
    """``param_callback``/``after_step`` on new parameter tensors (in place, as on live ones)."""
    with torch.no_grad():
        for callback in callbacks:
            callback(params)


def _is_adam(optimizer) -> bool:
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


_METHODS = {"darts": _darts, "sama": _sama, "neumann": _neumann, "cg": _cg,
            "first_order": _first_order}
#: the hypergradient methods a captured iteration holds; the others run eagerly
CAPTURED_METHODS = frozenset(_METHODS)
