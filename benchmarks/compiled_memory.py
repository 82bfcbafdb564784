"""Peak live tensor memory of MLO iterations: Betty, eager ``.mlo`` and compiled ``.mlo``.

Every side's engine is built in this process (as ``interleaved.py`` builds them), run for
``--warmup`` MLO iterations (for the compiled side: its first eager iteration and the
compilation, in the foreground), then for ``--iters`` more under torch.profiler's memory
events (``_common.run_with_tensor_memory``): the peak rise of live CPU tensor memory during
those iterations, above what the engine held before them (parameters, optimizer state, data).
That is the steady state a long run lives in; the compilation's own memory (tracing, code
generation) is not in it.

    python benchmarks/compiled_memory.py --method darts
    python benchmarks/compiled_memory.py --method cg --hvp-iters 3 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MLODSL_COMPILE_WAIT", "1")

import interleaved  # noqa: E402  (puts benchmarks/ and the repository on sys.path)
import _common  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="darts",
                    choices=["darts", "neumann", "cg", "sama", "unroll"])
    ap.add_argument("--unroll", type=int, default=1)
    ap.add_argument("--hvp-iters", type=int, default=1)
    ap.add_argument("--sides", default="betty,mlo,mlo_compiled")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sides = [s for s in args.sides.split(",") if s != "betty" or interleaved.expose_betty()]
    result = {"method": args.method, "unroll": args.unroll, "hvp_iters": args.hvp_iters,
              "iters": args.iters, "sides": {}}
    for side in sides:
        engine = interleaved.build_engine(side, "hpo", args.method, args.unroll, 1, args.seed,
                                          args.hvp_iters)
        interleaved.advance(side, engine, args.warmup * args.unroll)
        peak = _common.run_with_tensor_memory(
            lambda side=side, engine=engine: interleaved.advance(side, engine,
                                                              args.iters * args.unroll))
        result["sides"][side] = {"peak_tensor_mb": peak}
    base = result["sides"].get("betty", {}).get("peak_tensor_mb")
    for v in result["sides"].values():
        v["ratio_to_betty"] = v["peak_tensor_mb"] / base if base else None
    rows = [{"side": s, **v} for s, v in result["sides"].items()]
    print(_common.format_table(rows, [("side", "side"), ("peak_tensor_mb", "peak MiB"),
                                      ("ratio_to_betty", "ratio to betty")], floatfmt=".3g"))
    print(f"\nhpo {args.method} unroll {args.unroll}: peak rise of live tensor memory over "
          f"{args.iters} MLO iterations after {args.warmup} of warm-up.")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
