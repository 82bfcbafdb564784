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

Every rank waits at most ``timeout`` seconds (``EngineConfig.timeout``, 10 minutes by default)
for the others, when joining the group and in every collective: a rank that died or hangs ends
the run on every rank with an error that says so (:func:`collective`), rather than a job that
hangs forever. A rank stopped by SIGTERM (torchrun stops the others when one fails) that cannot
reach the end of its iteration within ``timeout`` exits without a final checkpoint
(:func:`exit_after`).
Several machines work through torchrun's own arguments (``--nnodes``, ``--rdzv-endpoint``);
see ``docs/systems.md``.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import threading
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from mlodsl.diagnostics import MLOError

__all__ = ["is_active", "rank", "world_size", "is_main", "wants_distributed", "setup",
           "local_device", "broadcast_tensors", "average_gradients", "average_tensors",
           "broadcast_object", "gather_objects", "any_flag", "launch", "collective",
           "exit_after", "shutdown", "DEFAULT_TIMEOUT"]

#: Seconds a rank waits for the others (``EngineConfig.timeout``'s default).
DEFAULT_TIMEOUT = 600.0
_timeout = DEFAULT_TIMEOUT  # the group's, once set up


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


def setup(backend: str | None = None, timeout: float | None = None) -> None:
    """Join the process group described by torchrun's environment (idempotent).

    ``backend`` None or ``"nccl"`` without CUDA falls back to ``gloo``: Betty's default
    ``backend="nccl"`` then still works on the CPU. ``timeout`` (seconds, default
    :data:`DEFAULT_TIMEOUT`) bounds joining and every collective.
    """
    global _timeout
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
    _timeout = float(timeout if timeout is not None else DEFAULT_TIMEOUT)
    with collective("joining the process group"):
        dist.init_process_group(backend=backend,
                                timeout=datetime.timedelta(seconds=_timeout))


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective (a rank that died, or did not answer within the
    timeout) into one clear error on this rank (exit status 1)."""
    try:
        yield
    except RuntimeError as err:  # DistBackendError, DistNetworkError, timeouts
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MLOError(
            f"rank {rank()} of {world_size()}: {what} failed: another rank stopped or did not "
            f"answer within the timeout of {_timeout:g} s ({type(err).__name__}: {first})",
            kind="run", hint="the other ranks' messages say why; for steps slower than the "
                             "timeout raise `timeout` in the engine block") from err


def shutdown() -> None:
    """Leave the process group (every rank, at the end of a run): wait for the others, then
    destroy it, so no rank exits while another still talks to it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        with collective("waiting for the other ranks to finish (barrier)"):
            dist.barrier()
    finally:
        dist.destroy_process_group()


def exit_after(seconds: float, message: str, status: int) -> threading.Timer:
    """Exit the process with ``status`` after ``seconds`` unless cancelled (a daemon timer):
    a rank told to stop that hangs (in user code, say) still ends."""
    def stop() -> None:
        sys.stderr.write(f"mlodsl: error: rank {rank()}: {message}\n")
        sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    return timer


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
            with collective("broadcasting the parameters"):
                dist.broadcast(t.data, src=0)


def average_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` across ranks in place, as one flat all-reduce (one message)."""
    if not is_active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    with collective("averaging gradients (all_reduce)"):
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

    with collective("averaging unrolled gradients (all_reduce)"):
        return [all_reduce(g, op=dist.ReduceOp.SUM) / world_size() for g in grads]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. validation metrics)."""
    if not is_active():
        return obj
    box = [obj]
    with collective("broadcasting from rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); ``[obj]`` when not distributed."""
    if not is_active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    with collective("gathering the checkpoint's per-rank state"):
        dist.gather_object(obj, out, dst=0)
    return out


def any_flag(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (e.g. a signal that reached only some processes)."""
    if not is_active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    with collective("agreeing on whether to stop (all_reduce)"):
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
    run as ``torchrun --standalone --nproc_per_node nproc`` would (torchrun's agent runs in
    this process); failed ranks are reported one line each (how they ended), status 1. For
    several machines call torchrun yourself (``docs/systems.md``).
    """
    if nproc < 1:
        raise MLOError(f"--nproc must be >= 1, got {nproc}")
    if callable(fn_or_argv):
        import torch.multiprocessing as mp

        mp.spawn(_spawned, args=(nproc, _free_port(), fn_or_argv, args), nprocs=nproc, join=True)
        return 0
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}",
                                *[str(a) for a in fn_or_argv]])
    try:
        torchrun.run(args)  # torchrun itself, in this process: its failures are ours to word
    except ChildFailedError as err:
        first, _ = err.get_first_failure()  # torchrun's root cause
        failures = dict(err.failures)
        sys.stderr.write(describe_failures({first: failures.pop(first), **failures}) + "\n")
        return 1
    return 0


def describe_failures(failures: dict) -> str:
    """One line per failed rank (torchrun's ``ProcessFailure``s), the root cause first."""
    import signal as _signal

    def how(f) -> str:
        code = getattr(f, "exitcode", None)
        if isinstance(code, int) and code < 0:
            try:
                return f"was killed by {_signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        if isinstance(code, int) and code > 128:
            try:
                return f"stopped on {_signal.Signals(code - 128).name} (exit status {code})"
            except ValueError:
                pass
        return f"ended with exit status {code}"

    first = next(iter(failures))
    lines = [f"mlodsl: error: distributed run failed: rank {first} {how(failures[first])}"]
    lines += [f"  then rank {r} {how(f)}" for r, f in sorted(failures.items()) if r != first]
    return "\n".join(lines)
