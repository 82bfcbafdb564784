"""The compiled iteration on a device: eager, compiled, and compiled with CUDA graphs.

The seed's HPO program (``examples/hpo/hpo.mlo``) is built three times in this process, on
``--device``: ``eager`` (``compile = False``), ``compiled`` (``compile = True`` with
``MLODSL_CUDA_GRAPHS=0``: inductor's kernels, one launch each) and ``cudagraphs``
(``compile = True``: on CUDA ``mode="reduce-overhead"``, the iteration replayed as one CUDA
graph from static batch buffers). Each compiled side's first turn compiles in the foreground
(``first_turn_s``: the compilation's cost, cold or warm by inductor's cache). Then the sides
take turns running ``--chunk`` engine iterations for ``--rounds`` rounds; each turn is timed on
the wall clock between two ``torch.cuda.synchronize()`` calls; the report is the median ms per
iteration per side, the ratios to eager, and how far the compiled sides' parameters are from
eager's after the same iterations (relative, per tensor, the largest).

    python benchmarks/compiled_cuda.py --device cuda --json
    python benchmarks/compiled_cuda.py --device cpu --backend python --rounds 2 --chunk 2  # rehearsal
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["MLODSL_COMPILE_WAIT"] = "1"
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _common  # noqa: E402

SIDES = ("eager", "compiled", "cudagraphs")


def build(side: str, device: str):
    """The seed's program for one side, on ``device``, without validation."""
    import mlodsl

    path = HERE.parent / "examples" / "hpo" / "hpo.mlo"
    plan = mlodsl.compile(str(path), overrides=[
        f"engine.compile={side != 'eager'}", "engine.iterations=1", f'engine.device="{device}"'])
    engine = plan.build_engine(console=False)
    engine.config.valid_step = 0
    return engine


def advance(side: str, engine, iterations: int, sync) -> float:
    """``iterations`` more engine iterations; their wall seconds (device synchronised)."""
    # read when a pattern is compiled (the side's first turn): which mode it gets
    os.environ["MLODSL_CUDA_GRAPHS"] = "0" if side == "compiled" else "1"
    engine.config.train_iters = engine.global_step + iterations
    sync()
    t0 = time.perf_counter()
    engine.run()
    sync()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--backend", default="inductor",
                    help="MLODSL_COMPILE_BACKEND (python: a quick rehearsal, nothing compiled)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=50, help="engine iterations per turn")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    os.environ["MLODSL_COMPILE_BACKEND"] = args.backend
    import torch

    torch.set_num_threads(1)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("compiled_cuda: --device cuda needs CUDA", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sides = [s for s in args.sides.split(",") if s]
    engines = {s: build(s, args.device) for s in sides}
    first_turn, per_round = {}, {s: [] for s in sides}
    for r in range(args.warmup_rounds + args.rounds):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            seconds = advance(side, engines[side], args.chunk, sync)
            first_turn.setdefault(side, seconds)
            if r >= args.warmup_rounds:
                per_round[side].append(seconds / args.chunk)
    ref = {n: [p.detach().double().cpu() for p in prob.trainable_parameters()]
           for n, prob in engines[sides[0]].problems.items()}

    def distance(engine) -> float:
        worst = 0.0
        for n, prob in engine.problems.items():
            for a, p in zip(ref[n], prob.trainable_parameters()):
                b = p.detach().double().cpu()
                worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
        return worst

    result = {"benchmark": "compiled_cuda", "device": args.device, "backend": args.backend,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "rounds": args.rounds, "chunk": args.chunk,
              "sides": {}}
    for s in sides:
        whole = getattr(engines[s], "whole_iteration", None)
        ms = 1e3 * statistics.median(per_round[s]) if per_round[s] else float("nan")
        result["sides"][s] = {
            "ms_per_iter_median": ms, "first_turn_s": first_turn[s],
            "over_first_side": ms / (1e3 * statistics.median(per_round[sides[0]]))
            if per_round[sides[0]] else float("nan"),
            "captured_iterations": whole.captured_iterations if whole else 0,
            "static_buffers": {", ".join(k): v["fills"]
                               for k, v in whole.static_buffers().items()} if whole else {},
            "max_rel_distance_to_first_side": distance(engines[s])}
    rows = [{"side": s, **v} for s, v in result["sides"].items()]
    print(_common.format_table(rows, [
        ("side", "side"), ("ms_per_iter_median", "median ms/it"),
        ("over_first_side", f"/ {sides[0]}"), ("first_turn_s", "first turn s"),
        ("captured_iterations", "captured its"),
        ("max_rel_distance_to_first_side", "max rel. dist.")], floatfmt=".3g"))
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
