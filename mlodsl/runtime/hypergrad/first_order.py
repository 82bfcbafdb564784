"""``first_order()``: drop the implicit term.

The upper's gradient is only the direct one, ``d f / d lambda`` at the lower's current
parameters; the lower's best-response Jacobian is taken to be zero. Cheapest, and biased
whenever the upper's loss depends on ``lambda`` through the lower.
"""
from __future__ import annotations

from mlodsl.runtime.hypergrad.registry import HypergradRequest, register


@register("first_order")
def first_order(request: HypergradRequest) -> list[None]:
    """Contribute nothing to any target."""
    return [None] * len(request.target_params())
