"""Small parts for the back-end tests' programs (unique module name: bk_parts)."""
import torch
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    """A linear map without bias (4 -> 2 by default)."""

    def __init__(self, n_in=4, n_out=2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.1)

    def forward(self, x):
        return x @ self.weight.t()


class Knob(nn.Module):
    """One learnable scale, returned by forward()."""

    def __init__(self, init=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self):
        return self.scale


def toy(n=32, n_in=4, n_out=2, seed=0):
    """A regression TensorDataset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    return torch.utils.data.TensorDataset(x, torch.randn(n, n_out, generator=g))


def toy_batches(n=3):
    """A list of (x, y) batches (an iterable used as is)."""
    ds = toy(8 * n)
    return [(ds.tensors[0][i * 8:(i + 1) * 8], ds.tensors[1][i * 8:(i + 1) * 8]) for i in range(n)]


def dict_batches(n=2):
    """Batches as dicts with keys 'image' and 'label'."""
    return [{"image": x, "label": y} for x, y in toy_batches(n)]


def load_table(path):
    """Reads a file (a missing one raises FileNotFoundError in user code)."""
    with open(path) as f:
        return f.read()


def inner_loss(problems, batch):
    """Reads inner and outer (connected)."""
    x, y = batch
    return F.mse_loss(problems.inner(x), y) * problems.outer()


def sneaky_loss(problems, batch):
    """Reads 'other', which the program does not connect to 'inner'."""
    x, y = batch
    return F.mse_loss(problems.inner(x), y) + problems.other() ** 2


def mean_accuracy(model, dataset):
    """Negative MSE of ``model`` on ``dataset``, as a dict."""
    x, y = dataset.tensors
    return {"neg_mse": -F.mse_loss(model(x), y).item()}
