"""Parts of the three-level example: data reweighting under tuned regularisers.

Level 0, ``classifier``: the long-tailed, label-noisy digits of ``examples.reweighting``, each
example's cross-entropy weighted by the level-1 weight net, plus an L2 penalty whose
coefficient is set by level 2.

Level 1, ``reweight``: Meta-Weight-Net, judged on the 100-example clean meta set, plus an L2
penalty on its own parameters whose coefficient is also set by level 2 (the meta set is tiny,
so the weight net is a natural thing to regularise).

Level 2, ``decay``: the two L2 coefficients (:class:`LogDecay`, stored as logarithms so they
stay positive), judged on the rest of the validation split, disjoint from the meta set.

Because the classifier's loss reads ``decay`` directly and the weight net's loss reads it too,
both edges carry a hypergradient: ``decay`` reaches the classifier's best response through the
``reweight -> classifier`` edge's method, and the weight net's best response through the
``decay -> reweight`` edge's method.
"""
from __future__ import annotations

import torch
from torch import nn

from examples.reweighting.parts import (Net, WeightNet, accuracy, digits, holdout_digits, l2,
                                        meta_digits, noisy_digits, reweighted_ce)

__all__ = ["LogDecay", "Net", "WeightNet", "accuracy", "digits", "holdout_digits", "l2",
           "meta_digits", "noisy_digits", "reweighted_ce"]


class LogDecay(nn.Module):
    """Positive coefficients ``exp(log_value)``, one per entry of ``init``.

    ``forward()`` returns them as a 1-D tensor (index it: ``decay()[0]``). The logarithm makes
    an additive optimizer step a multiplicative change, the natural scale for a weight decay.
    """

    def __init__(self, init=(1e-3, 1e-3)):
        super().__init__()
        self.log_value = nn.Parameter(torch.tensor([float(v) for v in init]).log())

    def forward(self) -> torch.Tensor:
        """The coefficients, ``exp(log_value)``."""
        return self.log_value.exp()
