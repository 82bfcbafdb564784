"""Small shared helpers for the benchmarks in this folder.

Kept dependency-light on purpose: this module is imported both by the mlodsl side (the system
Python) and by the Betty side (``benchmarks/.betty-venv``, which has only torch, numpy and
betty-ml), so it may import torch but nothing from ``mlodsl`` and nothing optional at module
level.

What is here:

- :func:`program_args`, :func:`setup_process`: the command line every benchmark program takes,
  and the seed/thread set-up that makes two programs comparable.
- :func:`load_data`, :func:`write_digits`: MNIST-shaped data (synthetic, or scikit-learn's
  digits upscaled to 28x28 for a meaningful accuracy).
- :class:`TimedLoader`: a ``DataLoader`` that timestamps every batch it hands out, so that a
  program can time "MLO iterations" from the outside of a library's ``Engine.run()``.
- :func:`peak_rss_mb`: the process's peak resident set size (a high-water mark);
  :func:`cuda_sync`, :func:`cuda_peak_mb`: the GPU's side of timing and memory (``--device
  cuda``: wall-clock stamps after a ``torch.cuda.synchronize()``, peak memory from
  ``torch.cuda.max_memory_allocated``).
- :func:`emit`, :func:`parse_result_line`: one JSON line per measurement, and reading it back.
- :func:`format_table`, :func:`median`: reporting.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Any, Iterable, Sequence

import torch

#: Marker that starts the result line, so it can be told apart from a library's own logging on
#: stdout (Betty logs its initialisation there).
RESULT_PREFIX = "BENCH_RESULT "

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- command line

def program_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line shared by every program in ``benchmarks/programs``.

    ``--iters`` counts measured *MLO iterations* (one upper step, i.e. ``--unroll`` lower steps
    followed by one hypergradient step), after ``--warmup`` unmeasured ones.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--method", default="darts",
                   choices=["darts", "neumann", "cg", "sama", "unroll"],
                   help="hypergradient method (Config.type; 'unroll' only for the .mlo "
                        "program, where it is `via unroll()`, second order)")
    p.add_argument("--unroll", type=int, default=1, help="lower steps per upper step")
    p.add_argument("--hvp-iters", type=int, default=1,
                   help="neumann/cg iterations (Config.neumann_iterations / cg_iterations)")
    p.add_argument("--iters", type=int, default=30, help="measured MLO iterations")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured MLO iterations first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' or the path of a .pt file written by write_digits()")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where both libraries run; neither program names a device (Betty "
                        "0.2.1 picks CUDA when it is visible), so 'cpu' hides the GPUs "
                        "(CUDA_VISIBLE_DEVICES='') and 'cuda' requires one")
    p.add_argument("--tensor-memory", action="store_true",
                   help="measure the peak of live CPU tensor bytes during the run instead of "
                        "time (torch.profiler's memory events; slows the run, so it is a pass "
                        "of its own)")
    p.add_argument("--json", action="store_true", help="print one JSON result line")
    args = p.parse_args(argv)
    if args.unroll < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--unroll and --iters must be >= 1, --warmup >= 0")
    return args


def setup_process(threads: int, seed: int, device: str | None = None) -> None:
    """Pin torch's thread count, choose the device, and seed every RNG the programs use.

    Both sides call this before building anything, so both start from the same weights and
    see the same batches. Neither library is told a device: Betty 0.2.1's Engine takes CUDA
    whenever ``torch.cuda.is_available()``, and mlodsl's default ``"auto"`` does the same. So
    ``device="cpu"`` hides the GPUs from this process (before CUDA is first touched), and
    ``device="cuda"`` only checks that there is one; :func:`run_and_report` then records the
    device the classifier's parameters actually ended up on. ``None`` leaves the devices
    alone (callers that place their tensors themselves).
    """
    global _REQUESTED_DEVICE
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this process")
    _REQUESTED_DEVICE = device
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


#: the device :func:`setup_process` was asked for (None: not chosen, nothing is enforced)
_REQUESTED_DEVICE: str | None = None


def cuda_in_use() -> bool:
    """Whether this process has started CUDA (then timing needs synchronisation)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def cuda_sync() -> None:
    """Wait for the GPU's queued work (no-op without CUDA): a wall-clock stamp taken after it
    counts the kernels launched before it, not just their launch."""
    if cuda_in_use():
        torch.cuda.synchronize()


def cuda_peak_mb() -> float | None:
    """``torch.cuda.max_memory_allocated()`` in MiB since the last reset (None without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**20 if cuda_in_use() else None


def total_engine_iters(args: argparse.Namespace) -> int:
    """Engine iterations (lower steps) to run: warmup + measured + 1 MLO iterations.

    The extra iteration supplies the timestamp that closes the last measured one (see
    :meth:`TimedLoader.seconds_per_batch`).
    """
    return (args.warmup + args.iters + 1) * args.unroll


# ----------------------------------------------------------------------------- data

def synthetic_data(seed: int, n_train: int = 6400, n_test: int = 1000):
    """Learnable MNIST-shaped data: a random prototype image per class plus Gaussian noise.

    Returns ``(x_train, y_train, x_test, y_test)`` with images of shape (N, 1, 28, 28),
    roughly zero-mean and unit-variance like normalised MNIST.
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    protos = torch.randn(NUM_CLASSES, *IMAGE_SHAPE, generator=g)

    def draw(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        x = 0.05 * protos[y] + torch.randn(n, *IMAGE_SHAPE, generator=g)
        return x, y

    return (*draw(n_train), *draw(n_test))


def write_digits(path: str, seed: int = 0, test_fraction: float = 0.2) -> str:
    """Write scikit-learn's 8x8 digits, upscaled to 28x28 and normalised, to ``path`` (.pt).

    Runs in the orchestrator's Python (which has scikit-learn); the programs then load the
    file with :func:`load_data`, so the Betty venv needs no scikit-learn.
    """
    from sklearn.datasets import load_digits  # optional dependency, only needed here

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=IMAGE_SHAPE[1:], mode="bilinear",
                                        align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"x_train": x[train], "y_train": y[train], "x_test": x[test],
                "y_test": y[test]}, path)
    return path


def load_data(spec: str, seed: int):
    """``(x_train, y_train, x_test, y_test)`` for ``--data spec`` (see :func:`program_args`)."""
    if spec == "synthetic":
        return synthetic_data(seed)
    d = torch.load(spec)
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def noisy_labels(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Copy of ``y`` with ``fraction`` of the labels replaced by uniformly random classes."""
    g = torch.Generator().manual_seed(20_000 + seed)
    y = y.clone()
    flip = torch.rand(len(y), generator=g) < fraction
    y[flip] = torch.randint(0, NUM_CLASSES, (int(flip.sum()),), generator=g)
    return y


class TimedLoader(torch.utils.data.DataLoader):
    """A shuffling ``DataLoader`` over in-memory tensors that timestamps every batch.

    Batches are gathered with one indexing operation (a ``BatchSampler`` as the sampler and
    ``batch_size=None``), so loading costs little next to the model. Each batch handed out
    appends ``time.perf_counter()`` to :attr:`stamps` and ``time.process_time()`` (the CPU
    time of the whole process) to :attr:`cpu_stamps`. Used as the *upper* problem's loader, the
    k-th stamp marks the start of the k-th upper step, i.e. the boundary between MLO
    iterations, whatever the library does inside ``Engine.run()``. CPU time is the steadier
    measure on a shared machine: time spent waiting for a core is not counted.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int):
        dataset = torch.utils.data.TensorDataset(*tensors)
        gen = torch.Generator().manual_seed(seed)
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, generator=gen), batch_size, drop_last=True)
        super().__init__(dataset, sampler=sampler, batch_size=None, num_workers=0)
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.rss_stamps: list[float] = []  # peak RSS so far, to split warmup from steady state
        self.cuda_stamps: list[float | None] = []  # peak GPU memory so far (CUDA only)
        #: synchronise CUDA before each stamp (set by :func:`run_and_report` on the loader
        #: that times the run: the upper's, so one sync per MLO iteration on either side)
        self.sync_cuda = False

    def __iter__(self):
        for batch in super().__iter__():
            # On a GPU the library's kernels run asynchronously: wait for them, or the stamp
            # would time their launch instead of their work.
            if self.sync_cuda:
                cuda_sync()
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())
            self.rss_stamps.append(peak_rss_mb())
            self.cuda_stamps.append(cuda_peak_mb())
            yield batch

    def median_seconds_per_batch(self, skip: int, count: int, cpu: bool = False
                                 ) -> float | None:
        """Median over the ``count`` intervals between consecutive stamps after ``skip``.

        Less sensitive than the mean to another process's burst of work on a shared machine
        (one interval inflated by a burst moves the mean, not the median).
        """
        stamps = self.cpu_stamps if cpu else self.stamps
        if len(stamps) < skip + count + 1:
            return None
        window = stamps[skip:skip + count + 1]
        return statistics.median(b - a for a, b in zip(window, window[1:]))

    def seconds_per_batch(self, skip: int, count: int, cpu: bool = False) -> float | None:
        """Mean seconds (wall, or process CPU with ``cpu``) between stamp ``skip`` and stamp
        ``skip + count``, or None if there are not that many stamps."""
        stamps = self.cpu_stamps if cpu else self.stamps
        if len(stamps) < skip + count + 1:
            return None
        return (stamps[skip + count] - stamps[skip]) / count


# ----------------------------------------------------------------------------- measurement

def run_with_tensor_memory(run) -> float:
    """Call ``run()`` and return the peak of live CPU tensor memory it reached, in MiB.

    The count is torch.profiler's memory events (every CPU tensor allocation and free, in
    order), summed from the call's start: the CPU analogue of CUDA's ``max_memory_allocated``.
    Unlike the process's RSS it does not depend on how the C allocator keeps freed memory, so
    it is the same from run to run and compares what two libraries keep alive.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (``getrusage``'s ``ru_maxrss``).

    A high-water mark: the difference between two readings is how far a phase pushed the peak
    above everything before it. Measured in a fresh process per run, it is comparable between
    two libraries that do the same work. (Linux reports KiB, macOS bytes.)
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def reset_peak_rss() -> tuple[float, float]:
    """Hand freed heap memory back to the OS and restart the peak-RSS high-water mark here.

    Returns ``(peak_before, now)`` in MiB: the old high-water mark, and the RSS the new one
    starts from. Without this, a run's rise of peak RSS depends on how much freed-but-resident
    heap the set-up happened to leave behind (glibc keeps it: a library whose set-up allocated
    and freed 10 MB then shows a 10 MB smaller rise for the same run). ``malloc_trim(0)``
    releases those pages (glibc; skipped elsewhere), and writing ``5`` to
    ``/proc/self/clear_refs`` resets the peak (Linux >= 4.0; elsewhere the old peak stays and
    ``now`` is the old peak, the previous behaviour).
    """
    before = peak_rss_mb()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        return before, before
    return before, peak_rss_mb()


@torch.no_grad()
def evaluate(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch: int = 500) -> dict[str, float]:
    """Cross-entropy and accuracy (%) of ``module`` (which returns log-probabilities).

    The data are moved, batch by batch, to the device of the module's parameters (the test set
    stays on the CPU; the library chose where the module lives).
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
        out = module(xb)
        loss += torch.nn.functional.nll_loss(out, yb, reduction="sum").item()
        correct += (out.argmax(dim=1) == yb).sum().item()
    module.train(was_training)
    return {"test_loss": loss / len(y), "test_acc": 100.0 * correct / len(y)}


def library_version(name: str) -> str:
    """``__version__`` of an imported top-level package, or 'unknown'."""
    return str(getattr(sys.modules.get(name), "__version__", "unknown"))


def emit(result: dict[str, Any], as_json: bool = True) -> None:
    """Print a program's result: one prefixed JSON line, or ``key: value`` lines."""
    if as_json:
        print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    else:
        for key in sorted(result):
            print(f"{key}: {result[key]}")


def parse_result_line(stdout: str) -> dict[str, Any] | None:
    """The last result line in a program's stdout, decoded, or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def error_string(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]


# ----------------------------------------------------------------------------- reporting

def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None if there are none)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                 floatfmt: str = ".4g") -> str:
    """A plain-text table. ``columns`` is a list of ``(key, header)``; None prints as '-'."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) for (_, h), w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


# ----------------------------------------------------------------------------- running a program

def run_and_report(args: argparse.Namespace, program: str, make_engine, upper_loader: TimedLoader,
                   classifier: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor,
                   extra: dict[str, Any] | None = None) -> int:
    """Build the engine, run it, and emit one result; return the process exit code.

    ``make_engine()`` builds the library's ``Engine`` (construction is inside the ``try`` so
    that a library which rejects the program at set-up time is reported, not crashed on).
    The library is named after the module ``Engine`` came from. Seconds per MLO iteration come
    from ``upper_loader``'s stamps; peak memory is the rise of the process's peak RSS during
    ``engine.run()``.
    """
    import gc
    import traceback

    result: dict[str, Any] = {
        "program": program, "method": args.method, "unroll": args.unroll,
        "hvp_iters": args.hvp_iters, "iters": args.iters, "warmup": args.warmup,
        "threads": args.threads, "seed": args.seed, "batch_size": args.batch_size,
        "data": "synthetic" if args.data == "synthetic" else os.path.basename(args.data),
        "torch": torch.__version__, "error": None,
        "requested_device": getattr(args, "device", None),
    }
    result.update(extra or {})
    code = 0
    try:
        engine = make_engine()
        library = type(engine).__mro__[-2].__module__.split(".")[0]  # the library's Engine base
        result["library"] = library
        result["version"] = library_version(library)
        device = next(classifier.parameters()).device
        result["device"] = str(device)
        if device.type == "cuda":
            result["device_name"] = torch.cuda.get_device_name(device)
            result["cuda_version"] = torch.version.cuda
        if _REQUESTED_DEVICE and device.type != _REQUESTED_DEVICE:
            # a library that silently fell back (or went elsewhere) is no comparison
            raise RuntimeError(f"--device {_REQUESTED_DEVICE} was requested but the library "
                               f"put the classifier on {device}")
        gc.collect()
        modules_before = set(sys.modules)
        if device.type == "cuda":  # peak GPU memory of the run alone, from what set-up left
            cuda_sync()
            torch.cuda.reset_peak_memory_stats(device)
            result["cuda_allocated_before_mb"] = torch.cuda.memory_allocated(device) / 2**20
        upper_loader.sync_cuda = device.type == "cuda"
        if args.tensor_memory:  # a memory pass: no timing (the profiler slows every op)
            result["peak_tensor_mb"] = run_with_tensor_memory(engine.run)
            result["timing"] = None
            result.update(evaluate(classifier, x_test, y_test))
            emit(result, args.json)
            return 0
        peak_before_trim, rss_before = reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        engine.run()
        cuda_sync()
        result["seconds_total"] = time.perf_counter() - t0
        result["cpu_seconds_total"] = time.process_time() - c0
        if device.type == "cuda":
            result["cuda_peak_mb"] = cuda_peak_mb()
            result["cuda_peak_delta_mb"] = (result["cuda_peak_mb"]
                                            - result["cuda_allocated_before_mb"])
            stamps = upper_loader.cuda_stamps
            if len(stamps) > args.warmup and stamps[args.warmup] is not None:
                result["cuda_peak_warmup_delta_mb"] = (stamps[args.warmup]
                                                       - result["cuda_allocated_before_mb"])
        result["peak_rss_mb"] = peak_rss_mb()
        result["peak_rss_delta_mb"] = result["peak_rss_mb"] - rss_before
        # the earlier measure: rise above the set-up's own (untrimmed) peak
        result["peak_rss_delta_untrimmed_mb"] = max(0.0, result["peak_rss_mb"] - peak_before_trim)
        # how much of that rise the warmup iterations already made (first-use allocations,
        # lazily imported modules), and how many modules the run imported
        if len(upper_loader.rss_stamps) > args.warmup:
            result["peak_rss_warmup_delta_mb"] = upper_loader.rss_stamps[args.warmup] - rss_before
        result["modules_imported_during_run"] = len(set(sys.modules) - modules_before)
        spi = upper_loader.seconds_per_batch(args.warmup, args.iters)
        result["upper_steps_seen"] = len(upper_loader.stamps)
        cpi = upper_loader.seconds_per_batch(args.warmup, args.iters, cpu=True)
        if spi is None:  # the library drew fewer upper batches than expected: fall back
            n = total_engine_iters(args) / args.unroll
            spi, cpi = result["seconds_total"] / n, result["cpu_seconds_total"] / n
            result["timing"] = "total/iterations (upper loader stamps missing)"
        else:
            result["timing"] = "upper-loader stamps"
        result["seconds_per_iter"] = spi
        result["cpu_seconds_per_iter"] = cpi
        # per-iteration medians: what one iteration costs when nobody else is busy
        result["median_seconds_per_iter"] = upper_loader.median_seconds_per_batch(
            args.warmup, args.iters)
        result["median_cpu_seconds_per_iter"] = upper_loader.median_seconds_per_batch(
            args.warmup, args.iters, cpu=True)
        result["loadavg"] = os.getloadavg()[0]  # how busy the machine was (1-minute average)
        result.update(evaluate(classifier, x_test, y_test))
    except Exception as exc:  # report the failure as data: "library X cannot run this"
        result["error"] = error_string(exc)
        result["traceback"] = traceback.format_exc()[-3000:]
        code = 1
    emit(result, args.json)
    return code
