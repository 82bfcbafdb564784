"""Lists of tensors as one vector: the arithmetic the hypergradient methods and clipping share.

A "vector" here is a list of tensors shaped like a problem's parameters. Reductions (dot
products, norms) are accumulated in float32 at least, so that bf16/fp16 parameters do not
ruin conjugate-gradient step sizes; the results stay tensors (no host synchronisation).
"""
from __future__ import annotations

from typing import Sequence

import torch

Vector = Sequence[torch.Tensor]

__all__ = ["dot", "norm", "axpy", "scale", "detached", "leaves"]


def _acc(t: torch.Tensor) -> torch.Tensor:
    # Accumulate low-precision reductions in float32; float64 stays float64.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def dot(xs: Vector, ys: Vector) -> torch.Tensor:
    """``sum_i <x_i, y_i>`` as a 0-d tensor."""
    return torch.stack([(_acc(x) * _acc(y)).sum() for x, y in zip(xs, ys)]).sum()


def norm(xs: Vector) -> torch.Tensor:
    """Euclidean norm of the concatenation of ``xs``."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(_acc(x)) for x in xs]))


def axpy(a, xs: Vector, ys: Vector) -> list[torch.Tensor]:
    """``y + a x`` elementwise over the lists (``a`` a number or a 0-d tensor)."""
    return [y + (a * x).to(y.dtype) for x, y in zip(xs, ys)]


def scale(a, xs: Vector) -> list[torch.Tensor]:
    """``a x`` elementwise over the list."""
    return [(a * x).to(x.dtype) for x in xs]


def detached(xs: Vector) -> list[torch.Tensor]:
    """Graph-free views of ``xs``."""
    return [x.detach() for x in xs]


def leaves(xs: Vector) -> list[torch.Tensor]:
    """Fresh autograd leaves with the values of ``xs`` (the originals are left untouched)."""
    return [x.detach().requires_grad_(True) for x in xs]
