"""mlodsl vs Betty 0.2.1: the same MLO programs, timed side by side.

For each program (``hpo``: the seed's per-parameter weight decay; ``reweight``: Meta-Weight-Net
style data reweighting), each hypergradient method (darts, neumann, cg) and each unroll
(1 and 5), this runs ``benchmarks/programs/<program>_betty.py`` in Betty's own virtual
environment and ``<program>_mlodsl.py`` in this Python, alternating which goes first, with the
same seed, threads and hyperparameters, each measurement in a fresh process. It reports the
median seconds per MLO iteration, the median rise of peak RSS during the run, the ratio
mlodsl / Betty, and both against the pass-count bound of ``benchmarks/passcount.py``. A short
accuracy check on scikit-learn's digits (upscaled to 28x28) confirms both sides learn the same.

    python benchmarks/vs_betty.py --setup          # (re)create benchmarks/.betty-venv only
    python benchmarks/vs_betty.py --quick          # ~8 minutes on 2 CPU cores
    python benchmarks/vs_betty.py --methods darts --programs hpo --iters 100 --repeats 5

The Betty venv is created automatically on the first run: torch pinned first (so pip never
pulls another build), then ``betty-ml==0.2.1`` with ``--no-deps --ignore-requires-python``
(it declares Python < 3.11), then numpy, its only other import-time dependency.

On a GPU (``--device cuda``) the same programs run on CUDA on both sides: neither program
names a device, Betty 0.2.1 takes CUDA when it is visible and mlodsl's ``"auto"`` does too
(``--device cpu``, the default, hides the GPUs from both). Each result records the device the
classifier's parameters were on, and a side that lands elsewhere is reported as an error.
Time is wall-clock per MLO iteration with ``torch.cuda.synchronize()`` before each stamp;
memory is ``torch.cuda.max_memory_allocated`` (reset just before ``Engine.run()``) besides
RSS. The pass-count bound is timed on the CPU and is skipped on CUDA. Where Betty is already
importable (e.g. from ``PYTHONPATH``), ``--betty-python python3 --no-setup`` uses that
interpreter instead of the venv::

    PYTHONPATH=/tmp/site python3 benchmarks/vs_betty.py --device cuda \
        --betty-python python3 --no-setup --iters 20 --warmup 5 --repeats 1

Results: a table and JSON on stdout, the JSON also in ``benchmarks/results/vs_betty.json``
(``vs_betty_cuda.json`` with ``--device cuda``). Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (after the path set-up above)

VENV = HERE / ".betty-venv"
RESULTS = HERE / "results"
PROGRAMS_DIR = HERE / "programs"
BETTY_SPEC = "betty-ml==0.2.1"
TORCH_SPEC = "torch==2.13.0"  # the CPU build on this machine's disk; any other spec may pull CUDA
BETTY_EXTRA_DEPS = ["numpy"]  # what `import betty.engine` needs besides torch
SIDES = ("betty", "mlodsl")
#: the optional sides: the program written in the language (``<program>_mlo.py``), as is and
#: with ``engine { compile = True }``
MLO_SIDE = "mlo"
MLO_COMPILED_SIDE = "mlo_compiled"
#: side -> (script suffix, extra arguments)
SIDE_SCRIPTS = {"betty": ("betty", []), "mlodsl": ("mlodsl", []), MLO_SIDE: ("mlo", []),
                MLO_COMPILED_SIDE: ("mlo", ["--compile"])}


def sides_for(program: str, compiled: bool = True) -> tuple[str, ...]:
    """Betty, mlodsl's Python API, and the ``.mlo`` versions where the program has one."""
    if not (PROGRAMS_DIR / f"{program}_{MLO_SIDE}.py").exists():
        return SIDES
    return SIDES + (MLO_SIDE,) + ((MLO_COMPILED_SIDE,) if compiled else ())


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries the results)."""
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- Betty venv

def venv_python() -> Path:
    """The Betty venv's interpreter."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def betty_ready(python: str | None = None) -> str | None:
    """``'betty X, torch Y'`` if ``python`` (default: the venv's) imports Betty's engine."""
    exe = python or str(venv_python())
    if python is None and not venv_python().exists():
        return None
    try:
        r = subprocess.run([exe, "-c", "import betty, betty.engine, torch; "
                            "print(betty.__version__, torch.__version__)"],
                           capture_output=True, text=True, env=_child_env(python is not None),
                           timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


def _child_env(keep_pythonpath: bool, threads: int | None = None,
               device: str | None = None) -> dict:
    """The environment of a program's process.

    ``PYTHONPATH`` is dropped for the venv (each program sets its own path; nothing leaks in)
    but kept with ``--betty-python``, where it is how that interpreter finds Betty. With
    ``device="cpu"`` the GPUs are hidden, so that neither library picks CUDA by itself.
    """
    env = dict(os.environ, PYTHONHASHSEED="0")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if not keep_pythonpath:
        env.pop("PYTHONPATH", None)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def setup_betty_venv(force: bool = False) -> str:
    """Create ``benchmarks/.betty-venv`` with Betty 0.2.1 (unless it already works)."""
    ready = betty_ready()
    if ready and not force:
        return ready
    log(f"[setup] creating {VENV.relative_to(ROOT)} ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first, pinned: betty-ml's own dependency on torch must find it already satisfied
    subprocess.run(pip + [TORCH_SPEC], check=True)
    subprocess.run(pip + ["--no-deps", "--ignore-requires-python", BETTY_SPEC], check=True)
    subprocess.run(pip + BETTY_EXTRA_DEPS, check=True)
    ready = betty_ready()
    if not ready:
        raise SystemExit("[setup] the Betty venv was built but `import betty.engine` fails")
    log(f"[setup] ok: betty, torch = {ready}")
    return ready


# ----------------------------------------------------------------------------- one measurement

def run_program(side: str, program: str, method: str, unroll: int, args: argparse.Namespace,
                iters: int | None = None, data: str = "synthetic",
                tensor_memory: bool = False) -> dict:
    """Run one program in a fresh process and return its result (errors included).

    ``tensor_memory``: the program's memory pass (peak live CPU tensor bytes, no timing).
    """
    if side == "betty":
        exe = args.betty_python or str(venv_python())
    else:
        exe = sys.executable
    suffix, extra = SIDE_SCRIPTS[side]
    script = PROGRAMS_DIR / f"{program}_{suffix}.py"
    cmd = [exe, str(script), *extra, "--method", method, "--unroll", str(unroll),
           "--iters", str(iters or args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--seed", str(args.seed),
           "--hvp-iters", str(args.hvp_iters), "--data", data, "--device", args.device,
           "--json"] + (["--tensor-memory"] if tensor_memory else [])
    env = _child_env(bool(args.betty_python), args.threads, args.device)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env,
                           cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"library": side, "error": f"timeout after {args.timeout}s"}
    res = _common.parse_result_line(r.stdout)
    if res is None:  # crashed before it could report (import error, segfault, ...)
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        res = {"library": side, "error": f"exit {r.returncode}: {tail[0][:400]}",
               "traceback": (r.stderr or "")[-3000:]}
    res["wall_seconds"] = time.perf_counter() - t0
    return res


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeats of one side of one configuration."""
    ok = [r for r in runs if not r.get("error")]
    errors = [r for r in runs if r.get("error")]
    out = {
        "runs": len(runs), "failed": len(errors),
        "seconds_per_iter": _common.median(r.get("seconds_per_iter") for r in ok),
        "seconds_per_iter_all": [r.get("seconds_per_iter") for r in ok],
        "cpu_seconds_per_iter": _common.median(r.get("cpu_seconds_per_iter") for r in ok),
        "cpu_seconds_per_iter_all": [r.get("cpu_seconds_per_iter") for r in ok],
        # median over repeats of each run's median iteration (robust to others' bursts)
        "median_cpu_seconds_per_iter": _common.median(r.get("median_cpu_seconds_per_iter")
                                                      for r in ok),
        "median_cpu_seconds_per_iter_all": [r.get("median_cpu_seconds_per_iter") for r in ok],
        "loadavg": _common.median(r.get("loadavg") for r in ok),
        "peak_rss_delta_mb": _common.median(r.get("peak_rss_delta_mb") for r in ok),
        "peak_rss_mb": _common.median(r.get("peak_rss_mb") for r in ok),
        "peak_rss_delta_untrimmed_mb": _common.median(r.get("peak_rss_delta_untrimmed_mb")
                                                      for r in ok),
        "peak_rss_warmup_delta_mb": _common.median(r.get("peak_rss_warmup_delta_mb")
                                                   for r in ok),
        "test_loss": ok[0].get("test_loss") if ok else None,
        "version": (ok or runs)[0].get("version"),
        "device": ok[0].get("device") if ok else None,
        "device_name": ok[0].get("device_name") if ok else None,
        "torch": ok[0].get("torch") if ok else None,
        "cuda_peak_mb": _common.median(r.get("cuda_peak_mb") for r in ok),
        "cuda_peak_delta_mb": _common.median(r.get("cuda_peak_delta_mb") for r in ok),
        "cuda_peak_warmup_delta_mb": _common.median(r.get("cuda_peak_warmup_delta_mb")
                                                    for r in ok),
        "error": errors[0]["error"] if errors else None,
    }
    if errors and "traceback" in errors[0]:
        out["traceback"] = errors[0]["traceback"]
    return out


def ratio(a, b):
    """a / b, or None when either is missing."""
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------- the benchmark

def pass_count_bounds(args: argparse.Namespace) -> dict:
    """Run ``passcount.py --json`` in a fresh process (same threads) and index its bounds."""
    cmd = [sys.executable, str(HERE / "passcount.py"), "--json", "--threads", str(args.threads),
           "--hvp-iters", str(args.hvp_iters)]
    for p in args.programs:
        cmd += ["--program", p]
    for k in args.unrolls:
        cmd += ["--unroll", str(k)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if r.returncode != 0:
        log(f"[passcount] failed: {r.stderr.strip().splitlines()[-1:]}")
        return {}
    models = json.loads(r.stdout)
    return {"models": models,
            "index": {(m["program"], b["method"], b["unroll"]): b
                      for m in models for b in m["bounds"]}}


def benchmark(args: argparse.Namespace) -> dict:
    """Run the whole comparison and return the report (also written to disk by main)."""
    t_start = time.perf_counter()
    if args.betty_python or args.no_setup:
        # Betty is expected to be importable already; a failure is reported per run, and the
        # mlodsl side is still measured.
        versions = betty_ready(args.betty_python)
        log(f"[bench] betty from {args.betty_python or venv_python()}: betty, torch = "
            f"{versions or 'NOT IMPORTABLE'}")
    else:
        versions = setup_betty_venv(force=False)
        log(f"[bench] betty venv: betty, torch = {versions}")

    if args.device == "cuda" and not args.no_passcount:
        log("[bench] pass-count bound skipped: it is timed on the CPU")
    skip_bound = args.no_passcount or args.device == "cuda"
    passcount = {} if skip_bound else pass_count_bounds(args)
    rows = []
    configs = [(p, m, k) for p in args.programs for m in args.methods for k in args.unrolls]
    for n, (program, method, unroll) in enumerate(configs, 1):
        sides = sides_for(program, compiled=not args.no_compile)
        runs = {s: [] for s in sides}
        for rep in range(args.repeats):
            order = sides if rep % 2 == 0 else sides[::-1]  # alternate who goes first
            for side in order:
                res = run_program(side, program, method, unroll, args)
                runs[side].append(res)
                spi, cpi = res.get("seconds_per_iter"), res.get("cpu_seconds_per_iter")
                gpu = (f", {res['cuda_peak_delta_mb']:.1f} MiB GPU peak rise on "
                       f"{res.get('device')}" if res.get("cuda_peak_delta_mb") is not None
                       else "")
                log(f"[{n}/{len(configs)}] {program} {method} unroll={unroll} rep={rep} "
                    f"{side}: " + (f"{spi * 1e3:.2f} ms/iter wall, {cpi * 1e3:.2f} cpu{gpu}"
                                   if spi else res.get("error")))
        summary = {side: summarize(runs[side]) for side in sides}
        if args.device == "cpu" and not args.no_tensor_memory:
            # the memory pass: live tensor bytes, which RSS blurs with the C allocator's habits
            for side in sides:
                res = run_program(side, program, method, unroll, args,
                                  iters=min(args.iters, 10), tensor_memory=True)
                summary[side]["peak_tensor_mb"] = res.get("peak_tensor_mb")
                log(f"[{n}/{len(configs)}] {program} {method} unroll={unroll} {side}: "
                    f"peak live tensors {res.get('peak_tensor_mb') or 0:.2f} MiB"
                    + (f" ({res['error']})" if res.get("error") else ""))
        b, m = summary["betty"], summary["mlodsl"]
        mlo = summary.get(MLO_SIDE)
        mloc = summary.get(MLO_COMPILED_SIDE)
        bound = passcount.get("index", {}).get((program, method, unroll)) or {}
        rows.append({
            "program": program, "method": method, "unroll": unroll,
            "betty": b, "mlodsl": m, MLO_SIDE: mlo, MLO_COMPILED_SIDE: mloc,
            "mlo_compiled_ratio_median_cpu_time": ratio(
                mloc["median_cpu_seconds_per_iter"], b["median_cpu_seconds_per_iter"])
            if mloc else None,
            "mlo_compiled_median_over_bound": ratio(mloc["median_cpu_seconds_per_iter"],
                                                    bound.get("bound_seconds")) if mloc else None,
            "ratio_median_cpu_time": ratio(m["median_cpu_seconds_per_iter"],
                                           b["median_cpu_seconds_per_iter"]),
            "ratio_tensor_memory": ratio(m.get("peak_tensor_mb"), b.get("peak_tensor_mb")),
            "mlo_ratio_median_cpu_time": ratio(mlo["median_cpu_seconds_per_iter"],
                                               b["median_cpu_seconds_per_iter"]) if mlo else None,
            "mlo_ratio_tensor_memory": ratio(mlo.get("peak_tensor_mb"),
                                             b.get("peak_tensor_mb")) if mlo else None,
            "mlo_test_loss_diff": (abs(mlo["test_loss"] - b["test_loss"])
                                   if mlo and mlo["test_loss"] is not None
                                   and b["test_loss"] is not None else None),
            "ratio_time": ratio(m["seconds_per_iter"], b["seconds_per_iter"]),
            "ratio_cpu_time": ratio(m["cpu_seconds_per_iter"], b["cpu_seconds_per_iter"]),
            "ratio_memory": ratio(m["peak_rss_delta_mb"], b["peak_rss_delta_mb"]),
            "ratio_cuda_memory": ratio(m["cuda_peak_delta_mb"], b["cuda_peak_delta_mb"]),
            "ratio_cuda_peak": ratio(m["cuda_peak_mb"], b["cuda_peak_mb"]),
            # both sides must have run where they were asked to (None when a side failed)
            "same_device": (m["device"] == b["device"]
                            if m["device"] is not None and b["device"] is not None else None),
            "bound_seconds": bound.get("bound_seconds"),
            "bound_plain_steps": bound.get("bound_plain_steps"),
            "passes": bound.get("passes"),
            # the bound's primitives are timed in CPU time: compare with CPU time
            "mlodsl_over_bound": ratio(m["cpu_seconds_per_iter"], bound.get("bound_seconds")),
            "mlodsl_median_over_bound": ratio(m["median_cpu_seconds_per_iter"],
                                              bound.get("bound_seconds")),
            "mlo_median_over_bound": ratio(mlo["median_cpu_seconds_per_iter"],
                                           bound.get("bound_seconds")) if mlo else None,
            "betty_median_over_bound": ratio(b["median_cpu_seconds_per_iter"],
                                             bound.get("bound_seconds")),
            "betty_over_bound": ratio(b["cpu_seconds_per_iter"], bound.get("bound_seconds")),
            "test_loss_diff": (abs(m["test_loss"] - b["test_loss"])
                               if m["test_loss"] is not None and b["test_loss"] is not None
                               else None),
        })
        # After every configuration: a run cut short (a time limit) keeps what it measured.
        _write_json(args.out, {"benchmark": "mlodsl vs Betty", "partial": True,
                               "device": args.device, "betty_venv": versions, "rows": rows})

    accuracy = [] if args.no_accuracy else accuracy_check(args)
    return {
        "benchmark": "mlodsl vs Betty",
        "settings": {k: v for k, v in vars(args).items() if k not in ("setup",)},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "betty_venv": versions,
        "betty_python": args.betty_python or str(venv_python()),
        "device": args.device,
        "devices_seen": sorted({r[s]["device"] for r in rows for s in SIDES
                                if r[s]["device"] is not None}),
        "device_names": sorted({r[s]["device_name"] for r in rows for s in SIDES
                                if r[s]["device_name"]}),
        "torch_versions": sorted({r[s]["torch"] for r in rows for s in SIDES if r[s]["torch"]}),
        "mlodsl_commit": git_commit(),
        "rows": rows,
        "accuracy": accuracy,
        "passcount": passcount.get("models"),
        "seconds": time.perf_counter() - t_start,
        "mean_loadavg": _common.median(r[s]["loadavg"] for r in rows for s in SIDES),
    }


def accuracy_check(args: argparse.Namespace) -> list[dict]:
    """darts, unroll 1, on digits: both sides' test accuracy after ``--accuracy-iters``."""
    try:
        data = _common.write_digits(str(RESULTS / "digits.pt"), seed=args.seed)
    except ImportError as exc:
        log(f"[accuracy] skipped: {exc}")
        return [{"error": f"skipped: {_common.error_string(exc)}"}]
    out = []
    for program in args.programs:
        row = {"program": program, "method": "darts", "unroll": 1, "data": "digits",
               "iters": args.accuracy_iters}
        for side in sides_for(program, compiled=False):
            res = run_program(side, program, "darts", 1, args, iters=args.accuracy_iters,
                              data=data)
            row[side] = {k: res.get(k) for k in ("test_acc", "test_loss", "error")}
            log(f"[accuracy] {program} {side}: acc={res.get('test_acc')} "
                f"loss={res.get('test_loss')} error={res.get('error')}")
        out.append(row)
    return out


def _write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` (the folder is created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def git_commit() -> str | None:
    """The repository's HEAD commit (short), if git is there."""
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=str(ROOT))
    return r.stdout.strip() or None


def table(report: dict) -> str:
    """The human-readable summary of a report."""
    rows = []
    for r in report["rows"]:
        b, m = r["betty"], r["mlodsl"]
        ms = lambda s: s * 1e3 if s is not None else None  # noqa: E731
        note = []
        if b["error"]:
            note.append(f"betty {b['failed']}/{b['runs']} failed: {b['error']}")
        if m["error"]:
            note.append(f"mlodsl {m['failed']}/{m['runs']} failed: {m['error']}")
        rows.append({
            "config": f"{r['program']} {r['method']} u{r['unroll']}",
            "betty_ms": ms(b["seconds_per_iter"]), "mlodsl_ms": ms(m["seconds_per_iter"]),
            "ratio": r["ratio_time"],
            "betty_cpu": ms(b["cpu_seconds_per_iter"]), "mlodsl_cpu": ms(m["cpu_seconds_per_iter"]),
            "cpu_ratio": r["ratio_cpu_time"],
            "betty_mb": b["peak_rss_delta_mb"], "mlodsl_mb": m["peak_rss_delta_mb"],
            "mem_ratio": r["ratio_memory"],
            "bound_ms": ms(r["bound_seconds"]), "bound_steps": r["bound_plain_steps"],
            "m_over_bound": r["mlodsl_over_bound"], "b_over_bound": r["betty_over_bound"],
            "betty_med": ms(b.get("median_cpu_seconds_per_iter")),
            "mlodsl_med": ms(m.get("median_cpu_seconds_per_iter")),
            "med_ratio": r.get("ratio_median_cpu_time"),
            "mlo_med": ms((r.get(MLO_SIDE) or {}).get("median_cpu_seconds_per_iter")),
            "mlo_ratio": r.get("mlo_ratio_median_cpu_time"),
            "mloc_med": ms((r.get(MLO_COMPILED_SIDE) or {}).get("median_cpu_seconds_per_iter")),
            "mloc_ratio": r.get("mlo_compiled_ratio_median_cpu_time"),
            "betty_tensor": b.get("peak_tensor_mb"), "mlodsl_tensor": m.get("peak_tensor_mb"),
            "tensor_ratio": r.get("ratio_tensor_memory"),
            "mlo_tensor": (r.get(MLO_SIDE) or {}).get("peak_tensor_mb"),
            "m_med_bound": r.get("mlodsl_median_over_bound"),
            "mlo_med_bound": r.get("mlo_median_over_bound"),
            "b_med_bound": r.get("betty_median_over_bound"),
            "betty_gpu": b.get("cuda_peak_delta_mb"), "mlodsl_gpu": m.get("cuda_peak_delta_mb"),
            "gpu_ratio": r.get("ratio_cuda_memory"),
            "betty_gpu_peak": b.get("cuda_peak_mb"), "mlodsl_gpu_peak": m.get("cuda_peak_mb"),
            "note": "; ".join(note)[:160],
        })
    on_gpu = report["settings"].get("device") == "cuda"
    columns = [
        ("config", "config"), ("betty_ms", "betty ms/it"), ("mlodsl_ms", "mlodsl ms/it"),
        ("ratio", "ratio"), ("betty_cpu", "betty cpu ms"), ("mlodsl_cpu", "mlodsl cpu ms"),
        ("cpu_ratio", "cpu ratio")]
    if on_gpu:  # GPU memory is the memory that matters there; the CPU-timed bound is skipped
        columns += [("betty_gpu", "betty dGPU MiB"), ("mlodsl_gpu", "mlodsl dGPU MiB"),
                    ("gpu_ratio", "gpu mem ratio"), ("betty_gpu_peak", "betty GPU peak"),
                    ("mlodsl_gpu_peak", "mlodsl GPU peak"), ("note", "note")]
    else:
        columns += [("betty_med", "betty med ms"), ("mlodsl_med", "mlodsl med ms"),
                    ("med_ratio", "med ratio"), ("mlo_med", ".mlo med ms"),
                    ("mlo_ratio", ".mlo/betty"), ("mloc_med", "compiled med ms"),
                    ("mloc_ratio", "compiled/betty"),
                    ("betty_tensor", "betty tensor MiB"), ("mlodsl_tensor", "mlodsl tensor MiB"),
                    ("tensor_ratio", "tensor ratio"), ("mlo_tensor", ".mlo tensor MiB"),
                    ("betty_mb", "betty dRSS MB"), ("mlodsl_mb", "mlodsl dRSS MB"),
                    ("mem_ratio", "dRSS ratio"), ("bound_ms", "bound ms"),
                    ("m_med_bound", "mlodsl/bound"), ("mlo_med_bound", ".mlo/bound"),
                    ("b_med_bound", "betty/bound"), ("note", "note")]
    text = _common.format_table(rows, columns, floatfmt=".3g")
    acc = [a for a in report.get("accuracy", []) if "program" in a]
    if acc:
        text += "\n\naccuracy on digits (darts, unroll 1):\n" + _common.format_table(
            [{"program": a["program"], "iters": a["iters"],
              "betty": a["betty"]["test_acc"], "mlodsl": a["mlodsl"]["test_acc"],
              "betty_loss": a["betty"]["test_loss"], "mlodsl_loss": a["mlodsl"]["test_loss"],
              "note": "; ".join(f"{s}: {a[s]['error']}" for s in SIDES if a[s]["error"])[:120]}
             for a in acc],
            [("program", "program"), ("iters", "iters"), ("betty", "betty acc %"),
             ("mlodsl", "mlodsl acc %"), ("betty_loss", "betty loss"),
             ("mlodsl_loss", "mlodsl loss"), ("note", "note")])
    s = report["settings"]
    if on_gpu:
        text += (f"\n\nDevice: {', '.join(report.get('devices_seen') or ['?'])} "
                 f"({', '.join(report.get('device_names') or ['?'])}), torch "
                 f"{', '.join(report.get('torch_versions') or ['?'])}. ms/it = wall-clock with "
                 f"torch.cuda.synchronize() at each stamp; dGPU = rise of "
                 f"torch.cuda.max_memory_allocated during Engine.run() above the memory "
                 f"allocated before it; GPU peak = the absolute max_memory_allocated (MiB).")
    text += (f"\n\n{s['iters']} measured MLO iterations after {s['warmup']} warmup, median of "
             f"{s['repeats']} fresh processes per side, {s['threads']} thread(s); "
             f"ms/it = wall, cpu ms = process CPU time per MLO iteration; ratio = mlodsl/betty; "
             f"med ms = median CPU time of one MLO iteration (median over the run's "
             f"iterations, then over the repeats), the steadier number on a shared machine; "
             f".mlo = the same program written in the language (benchmarks/programs/*_mlo.py), "
             f"whose darts/sama hypergradients differentiate gradient slices of the losses; "
             f"compiled = the .mlo program with engine compile = True (torch.compile of the "
             f"first-order loss evaluations; compilation happens in the warmup); "
             f"tensor MiB = peak of live CPU tensor memory during Engine.run() (torch.profiler "
             f"memory events, a separate 10-iteration pass); "
             f"dRSS = rise of peak RSS during Engine.run(), from the RSS after malloc_trim "
             f"(set-up heap released) and a reset of the high-water mark; bound = passcount.py's minimum "
             f"(CPU time), compared with the median CPU time. Mean 1-minute load average during the runs: "
             f"{report.get('mean_loadavg') or 0:.2f} on {report['machine']['cpus']} CPUs.")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    """Command line of the benchmark (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true",
                    help="(re)create benchmarks/.betty-venv and exit")
    ap.add_argument("--quick", action="store_true",
                    help="30 iterations after 5 warmup, 2 repeats, short accuracy check")
    ap.add_argument("--iters", type=int, default=None, help="measured MLO iterations (100)")
    ap.add_argument("--warmup", type=int, default=None, help="warmup MLO iterations (10)")
    ap.add_argument("--repeats", type=int, default=None, help="fresh processes per side (3)")
    ap.add_argument("--methods", default="darts,neumann,cg")
    ap.add_argument("--unrolls", default="1,5")
    ap.add_argument("--programs", default="hpo,reweight")
    ap.add_argument("--hvp-iters", type=int, default=1, help="neumann/cg iterations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accuracy-iters", type=int, default=None,
                    help="MLO iterations of the digits accuracy check (400)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-passcount", action="store_true")
    ap.add_argument("--no-compile", action="store_true",
                    help="leave out the .mlo programs' compiled side (engine compile = True)")
    ap.add_argument("--no-tensor-memory", action="store_true",
                    help="skip the memory pass (peak live CPU tensor bytes) per side")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per process")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="run both libraries on the CPU (default; GPUs hidden) or on CUDA")
    ap.add_argument("--betty-python", default=None, metavar="PYTHON",
                    help="interpreter that imports Betty (e.g. python3 with PYTHONPATH set) "
                         "instead of benchmarks/.betty-venv; PYTHONPATH is passed through")
    ap.add_argument("--no-setup", action="store_true",
                    help="never create the Betty venv (Betty must already be importable)")
    ap.add_argument("--out", default=None,
                    help="JSON report (default results/vs_betty.json, vs_betty_cuda.json on "
                         "CUDA)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / ("vs_betty_cuda.json" if args.device == "cuda"
                                  else "vs_betty.json"))
    quick = args.quick
    args.iters = args.iters or (30 if quick else 100)
    args.warmup = args.warmup if args.warmup is not None else (5 if quick else 10)
    args.repeats = args.repeats or (2 if quick else 3)
    args.accuracy_iters = args.accuracy_iters or (150 if quick else 400)
    args.methods = [m for m in args.methods.split(",") if m]
    args.unrolls = [int(k) for k in args.unrolls.split(",") if k]
    args.programs = [p for p in args.programs.split(",") if p]
    for p in args.programs:
        if not (PROGRAMS_DIR / f"{p}_betty.py").exists():
            ap.error(f"unknown program {p!r}")
    return args


def main(argv=None) -> int:
    """Entry point: set up, run, print the table and the JSON, write the JSON."""
    args = parse_args(argv)
    if args.setup:
        setup_betty_venv(force=True)
        return 0
    report = benchmark(args)
    out = Path(args.out)
    _write_json(args.out, report)
    print(table(report))
    print()
    print(json.dumps(report))
    log(f"[bench] wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
