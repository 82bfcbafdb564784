"""``reinforce(baseline_decay=0.9)``: score-function hypergradient for uppers that act by sampling.

Some uppers reach the lower only through what it *samples*: e.g. an upper that outputs a
distribution ``p_theta`` over training examples, from which the lower draws its batch. There is
no differentiable path, but ``grad_theta E_{s ~ p_theta}[R(s)] = E[(R(s) - b) grad_theta
log p_theta(s)]`` for any baseline ``b`` that does not depend on the current sample ``s``.

Convention: the lower's ``training_step`` returns ``{"loss": ..., "log_prob": ...}`` where
``log_prob`` is ``log p_theta(s)`` of what it sampled for that step, a tensor that depends on
the upper's parameters. The reward is ``R = -F`` with ``F`` the upper's (detached) loss, and the
contribution to the targets' gradient of ``F`` (which the upper *minimises*) is

    contribution = (F - b) * grad_targets log_prob,    then   b <- d b + (1 - d) F

with ``b`` the running mean of past upper losses (``d = baseline_decay``; ``b = F`` is *not*
used for the current sample, so the estimator stays unbiased; ``b = 0`` before the first
update). ``b`` lives in ``request.state`` (one per edge), so it survives across iterations. The
``log_prob`` of the lower's most recent step is used (with ``every > 1`` only the last sample
of the window is credited). The pathwise part through the lower's parameters (``v``) is not
used: this method estimates the whole dependence through sampling.

Reference: Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
Reinforcement Learning", Machine Learning 8, 1992 (REINFORCE with a baseline).
"""
from __future__ import annotations

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime.hypergrad.registry import HypergradRequest, register


@register("reinforce")
def reinforce(request: HypergradRequest, baseline_decay: float = 0.9
              ) -> list[torch.Tensor | None]:
    """Score-function estimate ``(F - b) grad log_prob`` (see module docstring)."""
    log_prob = (request.lower.last_metrics or {}).get("log_prob")
    if not isinstance(log_prob, torch.Tensor):
        raise MLOError(f"reinforce: problem '{request.lower.name}' must return a dict with a "
                       f"'log_prob' tensor from training_step (the log-probability of what it "
                       f"sampled)", kind="run")
    if request.upper_loss is None:
        return [None] * len(request.target_params())
    loss = request.upper_loss.detach().to(log_prob.dtype)
    baseline = request.state.get("baseline", torch.zeros_like(loss))
    advantage = loss - baseline  # the baseline predates this sample: no bias
    request.state["baseline"] = baseline_decay * baseline + (1 - baseline_decay) * loss
    return request.grad_targets(log_prob.sum(), advantage, retain_graph=True)
