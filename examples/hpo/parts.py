"""Parts of the weight-decay HPO example, shared by ``hpo.mlo`` and ``hpo_python.py``.

The seed's program: an MLP classifier (lower) whose every weight has its own L2 coefficient,
and those coefficients (upper) tuned by bilevel optimization. Data: scikit-learn's bundled
8x8 digits (64 features), standardised with the training split's statistics, or MNIST when
the IDX files are at hand (784 features).
"""
from __future__ import annotations

import functools
import gzip
import os
import struct

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Net", "WeightDecay", "weighted_l2", "digits", "mnist", "accuracy", "SPLITS"]


class Net(nn.Module):
    """An MLP without biases: ``sizes=[64, 200, 10]`` gives layers ``fc0`` (64->200), ``fc1``.

    Returns logits (the seed's ``log_softmax(dim=0)`` normalised over the batch, a slip;
    ``cross_entropy`` applies the log-softmax over classes itself).
    """

    def __init__(self, sizes=(64, 200, 10)):
        super().__init__()
        sizes = list(sizes)
        self.in_features = sizes[0]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.add_module(f"fc{i}", nn.Linear(a, b, bias=False))
        self.depth = len(sizes) - 1

    def forward(self, x):
        x = x.reshape(-1, self.in_features)  # the seed's view(-2, 784) is a slip for -1
        for i in range(self.depth):
            x = getattr(self, f"fc{i}")(x)
            if i < self.depth - 1:
                x = F.relu(x)
        return x


class WeightDecay(nn.Module):
    """One non-negative L2 coefficient per parameter entry of ``like``, starting at ``init``.

    ``like`` may be a module or a problem (its module is used). ``forward()`` returns the
    coefficients as a tuple in the order of ``like.parameters()``.
    """

    def __init__(self, like, init: float = 5e-4):
        super().__init__()
        like = getattr(like, "module", like)
        self.names = [n for n, _ in like.named_parameters()]
        self.decay = nn.ParameterList(
            nn.Parameter(torch.full_like(p.detach(), float(init))) for p in like.parameters())

    def forward(self):
        return tuple(self.decay)


def weighted_l2(model, decay) -> torch.Tensor:
    """``sum_i decay_i * theta_i^2 / 2`` over the parameters of ``model`` (a module or problem)."""
    model = getattr(model, "module", model)
    params = list(model.parameters())
    if len(params) != len(decay):
        raise ValueError(f"weighted_l2: {len(params)} parameters but {len(decay)} decay tensors")
    return sum((p.pow(2) * d).sum() for p, d in zip(params, decay)) / 2


SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=None)
def _digits_arrays(seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n = len(x)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    parts = {"train": slice(0, cut1), "val": slice(cut1, cut2), "test": slice(cut2, n)}
    mean = x[parts["train"]].mean(0)
    std = x[parts["train"]].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant pixels stay at 0
    x = (x - mean) / std
    return {k: (x[s].clone(), y[s].clone()) for k, s in parts.items()}


def digits(split: str = "train", seed: int = 0) -> torch.utils.data.TensorDataset:
    """scikit-learn's 8x8 digits, standardised; a fixed 60/20/20 ``train``/``val``/``test`` split.

    ``trainval`` joins the first two (for baselines that may use every labelled example).
    """
    arrays = _digits_arrays(seed)
    if split == "trainval":
        xs, ys = zip(arrays["train"], arrays["val"])
        return torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
    if split not in arrays:
        raise ValueError(f"digits: unknown split {split!r}; use one of {SPLITS + ('trainval',)}")
    return torch.utils.data.TensorDataset(*arrays[split])


def _read_idx(path: str) -> torch.Tensor:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    flat = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return flat.reshape(shape)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def mnist(directory: str, split: str = "train", val_size: int = 10000):
    """MNIST from the IDX files in ``directory`` (as distributed, gzipped or not).

    ``train`` is the first 60000 - ``val_size`` training images, ``val`` the rest, ``test`` the
    official test set. Pixels are scaled to [0, 1] then normalised with MNIST's mean 0.1307 and
    standard deviation 0.3081 (the seed's -1.1307 is a slip).
    """
    prefix = "t10k" if split == "test" else "train"
    images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte")).float() / 255.0
    labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte")).long()
    images = ((images - 0.1307) / 0.3081).reshape(len(images), -1)
    if split in ("train", "val"):
        cut = max(len(images) - val_size, 0)
        sl = slice(0, cut) if split == "train" else slice(cut, len(images))
        images, labels = images[sl], labels[sl]
    elif split != "test":
        raise ValueError(f"mnist: unknown split {split!r}")
    return torch.utils.data.TensorDataset(images, labels)


@torch.no_grad()
def accuracy(model, dataset, batch_size: int = 1024) -> dict:
    """Test accuracy in percent of ``model`` (a module or a problem) on ``dataset``."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    correct = total = 0
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        out = model(x.to(device))
        correct += (out.argmax(dim=1) == y.to(device)).sum().item()
        total += len(y)
    module.train(was_training)
    return {"acc": 100.0 * correct / total}
