"""An example's ``.mlo`` program eager and with ``compile = True``, in one process, taking turns.

Both engines are built once from ``examples/<name>/<name>.mlo`` (validation off); the
compiled one first runs ``--chunk`` iterations with the compilation in the foreground (its
first turn, reported as ``first_turn_s``). Then the two take turns running ``--chunk`` engine
iterations each for ``--rounds`` rounds; the ratio is the compiled side's CPU time over the
eager side's in the same round, median over rounds (after ``--warmup-rounds``), as in
``interleaved.py``.

    python benchmarks/examples_compiled.py --example reweighting
    python benchmarks/examples_compiled.py --example three_level --chunk 20 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MLODSL_COMPILE_WAIT", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _common  # noqa: E402


def build(example: str, compile: bool):
    """The example's engine, ``compile = True`` or not, without validation."""
    import mlodsl

    path = HERE.parent / "examples" / example / f"{example}.mlo"
    plan = mlodsl.compile(str(path), overrides=[f"engine.compile={compile}",
                                                "engine.iterations=1"])
    engine = plan.build_engine(console=False)
    engine.config.valid_step = 0
    return engine


def advance(engine, iterations: int) -> None:
    """``iterations`` more engine iterations (``run()`` continues from ``global_step``)."""
    engine.config.train_iters = engine.global_step + iterations
    engine.run()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default="reweighting", choices=["reweighting", "three_level"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=20, help="engine iterations per turn")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    engines = {"eager": build(args.example, False), "compiled": build(args.example, True)}
    first_turn, per_round = {}, {s: [] for s in engines}
    sides = list(engines)
    for r in range(args.warmup_rounds + args.rounds):
        for side in sides[r % 2:] + sides[:r % 2]:
            c0, w0 = time.process_time(), time.perf_counter()
            advance(engines[side], args.chunk)
            first_turn.setdefault(side, time.perf_counter() - w0)
            if r >= args.warmup_rounds:
                per_round[side].append((time.process_time() - c0) / args.chunk)
    whole = engines["compiled"].whole_iteration
    ratios = [c / e for c, e in zip(per_round["compiled"], per_round["eager"])]
    result = {"example": args.example, "rounds": args.rounds, "chunk": args.chunk,
              "loadavg": os.getloadavg()[0], "torch": torch.__version__,
              "patterns": {", ".join(k): v for k, v in whole.patterns().items()},
              "sides": {s: {"ms_per_iter_median": 1e3 * statistics.median(per_round[s]),
                            "first_turn_s": first_turn[s]} for s in sides},
              "compiled_over_eager_median": statistics.median(ratios),
              "speedup_median": statistics.median(1 / r for r in ratios)}
    rows = [{"side": s, **v} for s, v in result["sides"].items()]
    print(_common.format_table(rows, [("side", "side"), ("ms_per_iter_median", "median ms/it"),
                                      ("first_turn_s", "first turn s")], floatfmt=".3g"))
    print(f"\n{args.example}: compiled / eager {result['compiled_over_eager_median']:.3f} "
          f"(speed-up {result['speedup_median']:.2f}x), patterns {result['patterns']}, load "
          f"average {result['loadavg']:.2f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
