"""Wall time of a whole ``mlodsl run``: eager against ``compile = True``, cold and warm cache.

Runs ``python -m mlodsl run PROGRAM --iterations N`` in fresh processes, one after another:
eager; compiled with an empty inductor cache (cold) and again with that cache (warm); the same
two with ``MLODSL_COMPILE_WAIT=1`` (the compilation in the foreground, the run waiting for it:
what ``compile = True`` did before compiling in a background thread); eager again (how far the
machine drifted meanwhile). Each line: the wall seconds of the process (start-up, compilation,
the iterations, validation, the run folder) and the "compiling ..." note it printed.

    python benchmarks/end_to_end.py                                 # examples/hpo, 2,000 its
    python benchmarks/end_to_end.py --iterations 5000 --json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def one_run(program: str, iterations: int, compile: bool, cache: str, wait: bool,
            out: str) -> dict:
    """One ``mlodsl run`` in a fresh process: its wall seconds and its compiling note."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1",
               MLODSL_COMPILE_WAIT="1" if wait else "0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "mlodsl", "run", program, "--iterations", str(iterations),
           "--out", out, "--set", f"engine.compile={compile}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    notes = re.findall(r"(?:not )?compiling iteration[^\n]*", text)
    return {"seconds": seconds, "compiling": notes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", default="examples/hpo/hpo.mlo")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mlodsl-e2e-"))
    runs = [("eager", False, "unused", False),
            ("compiled, cold cache", True, "background", False),
            ("compiled, warm cache", True, "background", False),
            ("compiled in the foreground, cold cache", True, "foreground", True),
            ("compiled in the foreground, warm cache", True, "foreground", True),
            ("eager again", False, "unused", False)]
    rows = []
    for i, (label, compile, cache, wait) in enumerate(runs):
        r = one_run(args.program, args.iterations, compile, str(work / f"cache-{cache}"), wait,
                    str(work / f"run{i}"))
        rows.append({"run": label, **r})
        print(f"{label:40s} {r['seconds']:7.1f} s   {'; '.join(r['compiling'])}", flush=True)
    eager = min(rows[0]["seconds"], rows[-1]["seconds"])
    for r in rows:
        r["over_eager"] = r["seconds"] / eager
    print(f"\n{args.program}, {args.iterations} iterations, OMP_NUM_THREADS=1, load average "
          f"{os.getloadavg()[0]:.2f}; over the faster eager run: " +
          ", ".join(f"{r['run']} {r['over_eager']:.2f}" for r in rows[1:-1]))
    if args.json:
        print(json.dumps({"program": args.program, "iterations": args.iterations,
                          "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
