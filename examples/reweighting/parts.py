"""Parts of the data-reweighting example, shared by ``reweighting.mlo`` and ``reweighting_python.py``.

Meta-Weight-Net (Shu et al., NeurIPS 2019) on scikit-learn's 8x8 digits made hard on purpose:

* the training split is **long-tailed** (class ``c`` keeps ``imbalance ** (-c / 9)`` of its
  examples, so class 0 has ``imbalance`` times as many as class 9) and **label-noisy** (a
  fraction ``noise`` of the labels is replaced by a uniformly drawn class, possibly the same);
* the **meta** set is small, clean and class-balanced (``per_class`` examples of each class,
  taken from the validation split);
* the **test** split is the untouched, balanced 20% test split of ``examples.hpo.parts.digits``.

The classifier (lower) weights each example's cross-entropy by a small MLP of that loss value
(the upper, :class:`WeightNet`); the weight net is trained so that the classifier does well on
the meta set.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from examples.hpo.parts import Net, accuracy, digits

__all__ = ["Net", "WeightNet", "reweighted_ce", "noisy_digits", "meta_digits", "holdout_digits",
           "digits", "accuracy", "l2"]


class WeightNet(nn.Module):
    """Meta-Weight-Net: a ``1 -> hidden -> 1`` MLP mapping a per-sample loss to a weight in (0, 1).

    The output bias starts positive so that every example starts with a weight near
    ``sigmoid(init_bias)`` (about 0.73 with the default): early training then matches the
    unweighted baseline, and the upper only has to learn which losses to trust less.
    """

    def __init__(self, hidden: int = 100, init_bias: float = 1.0):
        super().__init__()
        self.fc0 = nn.Linear(1, hidden)
        self.fc1 = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.fc1.bias.fill_(init_bias)

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        """Weights of shape ``loss.shape`` for per-sample losses of any shape."""
        h = F.relu(self.fc0(loss.reshape(-1, 1)))
        return torch.sigmoid(self.fc1(h)).reshape(loss.shape)


def reweighted_ce(logits: torch.Tensor, target: torch.Tensor, weigher) -> torch.Tensor:
    """Cross-entropy per sample, weighted by ``weigher(loss)`` and normalised by the weights' sum.

    ``weigher`` is the weight net (a problem or a module). It sees the losses *detached*, as in
    Meta-Weight-Net: the weights are a function of the loss value, not a path for the classifier
    to lower its loss by changing the weights. Normalising by the sum (as MWN's code does)
    removes the trivial direction "scale every weight down", which only changes the step size.
    """
    losses = F.cross_entropy(logits, target, reduction="none")
    weights = weigher(losses.detach())
    return (weights * losses).sum() / (weights.sum() + 1e-8)


def l2(model) -> torch.Tensor:
    """``sum theta^2 / 2`` over the parameters of ``model`` (a module or a problem)."""
    model = getattr(model, "module", model)
    return sum(p.pow(2).sum() for p in model.parameters()) / 2


@functools.lru_cache(maxsize=None)
def _long_tail_noisy(imbalance: float, noise: float, seed: int):
    x, y = digits("train").tensors
    g = torch.Generator().manual_seed(1000 + seed)
    keep = []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        n = max(1, int(round(len(idx) * imbalance ** (-c / 9))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    keep = torch.cat(keep)
    x, clean = x[keep], y[keep]
    flip = torch.rand(len(clean), generator=g) < noise
    noisy = torch.where(flip, torch.randint(0, 10, (len(clean),), generator=g), clean)
    return x, noisy, clean


def noisy_digits(imbalance: float = 5.0, noise: float = 0.4, seed: int = 0,
                 with_clean: bool = False) -> torch.utils.data.TensorDataset:
    """The long-tailed, label-noisy training set (see the module docstring).

    With ``with_clean`` the dataset also holds the true labels as a third tensor (for reports).
    """
    x, noisy, clean = _long_tail_noisy(float(imbalance), float(noise), int(seed))
    tensors = (x, noisy, clean) if with_clean else (x, noisy)
    return torch.utils.data.TensorDataset(*tensors)


def _split_val(per_class: int):
    x, y = digits("val").tensors
    meta = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(10)])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[meta] = False
    return (x[meta], y[meta]), (x[rest], y[rest])


def meta_digits(per_class: int = 10) -> torch.utils.data.TensorDataset:
    """The clean, balanced meta set: the first ``per_class`` examples of each class in ``val``."""
    return torch.utils.data.TensorDataset(*_split_val(per_class)[0])


def holdout_digits(per_class: int = 10) -> torch.utils.data.TensorDataset:
    """The rest of the ``val`` split (disjoint from :func:`meta_digits`), for a third level."""
    return torch.utils.data.TensorDataset(*_split_val(per_class)[1])
