"""Data-parallel training on ``torch.distributed``: set-up, gradient averaging, launching.

The model is data parallel in the plainest sense: every rank holds every problem whole, steps
the same schedule on its own shard of each ``Dataset`` (see :func:`mlodsl.runtime.data.
make_loader`), and averages each problem's total gradient (hypergradients included) across
ranks right before the optimizer step (:func:`average_gradients`, called from
``Engine.before_optimizer_step``). Parameters start equal (:func:`broadcast_tensors`) and
stay equal because every rank applies the same averaged gradient. Only rank 0 logs, validates
and writes checkpoints; validation results are broadcast so that early stopping and
``ReduceLROnPlateau`` decide the same on every rank.

Backends: ``gloo`` on the CPU, ``nccl`` on CUDA (one GPU per process, ``LOCAL_RANK``).
Several machines work through torchrun's own arguments (``--nnodes``, ``--rdzv-endpoint``);
see ``docs/systems.md``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from mlodsl.diagnostics import MLOError

__all__ = ["is_active", "rank", "world_size", "is_main", "wants_distributed", "setup",
           "local_device", "broadcast_tensors", "average_gradients", "average_tensors",
           "broadcast_object", "gather_objects", "any_flag", "launch"]


def is_active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: the group's, else torchrun's ``RANK`` (0 when neither).

    The environment counts too because data loaders are built before the engine joins the
    process group (:func:`mlodsl.runtime.data.make_loader` shards by it).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes: the group's, else torchrun's ``WORLD_SIZE`` (1 when neither)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process logs, validates and writes checkpoints (rank 0)."""
    return rank() == 0


def wants_distributed(strategy: str) -> bool:
    """Whether a run with ``strategy`` should be distributed.

    ``"distributed"``/``"ddp"`` always; ``"default"`` when launched by torchrun (or
    :func:`launch`) with ``WORLD_SIZE > 1``, or when the caller already set up a group.
    """
    if strategy in ("zero", "fsdp"):
        raise MLOError(f"strategy '{strategy}' is not supported yet",
                       hint="use strategy='distributed' (data parallel); see docs/systems.md "
                            "for the FSDP plan")
    if strategy in ("distributed", "ddp"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or is_active()


def setup(backend: str | None = None) -> None:
    """Join the process group described by torchrun's environment (idempotent).

    ``backend`` None or ``"nccl"`` without CUDA falls back to ``gloo``: Betty's default
    ``backend="nccl"`` then still works on the CPU.
    """
    if not dist.is_available():
        raise MLOError("this build of torch has no torch.distributed", kind="run")
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise MLOError("a distributed run needs torchrun's environment (missing "
                       + ", ".join(missing) + ")", kind="run",
                       hint="launch with `mlodsl run FILE --nproc N`, `torchrun "
                            "--nproc_per_node N script.py`, or mlodsl.runtime.distributed.launch")
    if backend is None or (backend == "nccl" and not torch.cuda.is_available()):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


def local_device(requested: Any) -> Any:
    """The device of this rank: ``cuda:LOCAL_RANK`` when the run uses CUDA, else as given."""
    if isinstance(requested, torch.device):  # Engine(device=torch.device("cuda")) too
        requested = str(requested)
    want_cuda = requested in (None, "auto") and torch.cuda.is_available() or (
        isinstance(requested, str) and requested == "cuda")
    if want_cuda:
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return f"cuda:{index}"
    return requested


def broadcast_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``tensors`` to every rank, in place (all start from the same
    state: the engine passes its training state's parameters and buffers)."""
    if not is_active():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def average_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` across ranks in place, as one flat all-reduce (one message)."""
    if not is_active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average ``p.grad`` of ``params`` across ranks (a missing grad counts as zero)."""
    if not is_active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    with torch.no_grad():
        average_tensors([p.grad for p in params])


def average_differentiable(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Average a list of gradients across ranks, keeping them differentiable (unrolled steps)."""
    if not is_active():
        return list(grads)
    from torch.distributed.nn.functional import all_reduce

    return [all_reduce(g, op=dist.ReduceOp.SUM) / world_size() for g in grads]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. validation metrics)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); ``[obj]`` when not distributed."""
    if not is_active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def any_flag(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (e.g. a signal that reached only some processes)."""
    if not is_active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ----------------------------------------------------------------------------- launching

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, nproc: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(*args)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fn_or_argv: Callable | Sequence[str], *args: Any) -> int:
    """Run ``nproc`` data-parallel processes on this machine; return an exit status.

    ``fn_or_argv`` is either a picklable function (a module-level one), started in each process
    by ``torch.multiprocessing.spawn`` with torchrun's environment set and called as
    ``fn(*args)``, or a command line (``["script.py", "--flag"]`` or ``["-m", "module", ...]``)
    started by ``python -m torch.distributed.run --standalone --nproc_per_node nproc``. For
    several machines call torchrun yourself (``docs/systems.md``).
    """
    if nproc < 1:
        raise MLOError(f"--nproc must be >= 1, got {nproc}")
    if callable(fn_or_argv):
        import torch.multiprocessing as mp

        mp.spawn(_spawned, args=(nproc, _free_port(), fn_or_argv, args), nprocs=nproc, join=True)
        return 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *[str(a) for a in fn_or_argv]]
    return subprocess.call(cmd)
