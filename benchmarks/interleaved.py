"""Betty and mlodsl in one process, taking turns: paired time ratios that a busy machine
cannot skew.

``vs_betty.py`` runs each side in fresh processes, which is the fair way to measure memory and
start-up, but on a shared 2-core machine two processes minutes apart can differ by 30% in
speed. Here every side's engine is built once, in this process, from the *same program files*
(``programs/<program>_<side>.py``, their engine factory captured instead of run); then the
sides take turns running ``--chunk`` MLO iterations each, in a rotating order, for
``--rounds`` rounds. Each round gives each side's CPU time per MLO iteration and its ratio to
Betty's in the same round; the report is the median over rounds (after ``--warmup-rounds``).
A slow minute slows every side in that round alike and drops out of the ratio.

Betty is imported from ``benchmarks/.betty-venv`` (``vs_betty.py --setup`` creates it) through
a folder holding only a link to its package, so this process's torch is used by both sides.

    python benchmarks/interleaved.py --program hpo --method darts --unroll 1
    python benchmarks/interleaved.py --program hpo --method darts --unroll 5 --rounds 30 --json
    python benchmarks/interleaved.py --sides floor,mlo,mlo_compiled --method cg --hvp-iters 3

``--method`` takes darts, neumann, cg, sama and unroll; Betty has no unroll (reverse mode
through the window), so for it the ``betty`` and ``mlodsl`` sides run ``darts`` with the same
``--unroll``: the baseline is Betty's cheapest method.

Side ``floor`` is the seed HPO iteration hand-written as one pure function and compiled by
torch.compile (``floor.py``, a copy of the project's measuring stick ``shared/floor/``): the
time a compiled MLO iteration is held to. It has no engine and exists for the hpo program and
unroll 1 only. ``mlo_compiled`` is the ``.mlo`` program with ``compile = True`` (whole
iterations captured and compiled). The first turn of each side (engine already built) is timed
on the wall clock and reported as ``first_turn_s``: for compiled sides it is dominated by
compilation (cold: an empty inductor cache, e.g. a fresh ``TORCHINDUCTOR_CACHE_DIR``; warm: the
same command again).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _common  # noqa: E402

#: the method a side runs when it has no ``--method`` of its own: Betty (and the Python-API twin
#: of its program) has no ``unroll`` (reverse mode through the window), so an ``unroll`` row's
#: Betty baseline is Betty's ``darts`` with the same ``unroll_steps``, its cheapest method
BASELINE_METHOD = {"unroll": "darts"}

SIDE_SCRIPTS = {"betty": ("betty", []), "mlodsl": ("mlodsl", []), "mlo": ("mlo", []),
                "mlo_compiled": ("mlo", ["--compile"]), "floor": (None, [])}


class FloorSide:
    """The floor (``floor.py``) as a side: its compiled iteration, fed like the programs.

    Its batches come from the same kind of loaders as the programs' (``_common.TimedLoader``
    over the same synthetic data, restarted when exhausted), so every side pays the same data
    loading and the ratio compares what happens between batches.
    """

    def __init__(self, method: str, hvp_iters: int, seed: int, batch_size: int = 64):
        import torch
        import floor

        self.torch = torch
        self.fn = torch.compile(
            lambda state, *a: floor.iteration(state, *a, method=method, k=hvp_iters),
            dynamic=False)
        self.state = floor.initial_state(seed)
        x, y, _, _ = _common.load_data("synthetic", seed)
        self.loaders = [_common.TimedLoader(x, y, batch_size=batch_size, seed=seed + i)
                        for i in (1, 2)]
        self.streams = [iter(loader) for loader in self.loaders]
        self.t = 0

    def _next(self, i: int):
        try:
            x, y = next(self.streams[i])
        except StopIteration:
            self.streams[i] = iter(self.loaders[i])
            x, y = next(self.streams[i])
        return x.reshape(x.shape[0], -1), y

    def run(self, iterations: int) -> None:
        """``iterations`` more MLO iterations."""
        for _ in range(iterations):
            self.t += 1
            xl, yl = self._next(0)
            xu, yu = self._next(1)
            self.state = self.fn(self.state, self.torch.tensor(float(self.t)), xl, yl, xu, yu)


def expose_betty() -> bool:
    """Make ``import betty`` find the Betty venv's package (only it); False if there is none."""
    candidates = sorted((HERE / ".betty-venv" / "lib").glob("python*/site-packages/betty"))
    if not candidates:
        return False
    folder = Path(tempfile.mkdtemp(prefix="betty-only-"))
    (folder / "betty").symlink_to(candidates[0], target_is_directory=True)
    sys.path.append(str(folder))
    return True


def build_engine(side: str, program: str, method: str, unroll: int, threads: int, seed: int,
                 hvp_iters: int = 1):
    """Run ``programs/<program>_<side>.py`` up to its engine factory; return the engine."""
    if side == "floor":
        return FloorSide(method, hvp_iters, seed)
    suffix, extra = SIDE_SCRIPTS[side]
    if suffix != "mlo":
        method = BASELINE_METHOD.get(method, method)
    script = HERE / "programs" / f"{program}_{suffix}.py"
    captured = {}

    def capture(args, name, make_engine, *rest, **kwargs):
        captured["make_engine"] = make_engine
        return 0

    real, argv = _common.run_and_report, sys.argv
    _common.run_and_report = capture
    sys.argv = [str(script), *extra, "--method", method, "--unroll", str(unroll),
                "--iters", "1", "--warmup", "0", "--threads", str(threads), "--seed", str(seed),
                "--hvp-iters", str(hvp_iters)]
    # A real module in sys.modules (not runpy's borrowed __main__): torch.compile guards on the
    # globals of the functions it traces (the program's `F`, say) through sys.modules.
    module = types.ModuleType(f"bench_{program}_{side}")
    module.__file__ = str(script)
    sys.modules[module.__name__] = module
    try:
        exec(compile(script.read_text(), str(script), "exec"), module.__dict__)
    except SystemExit:
        pass
    finally:
        _common.run_and_report, sys.argv = real, argv
    engine = captured["make_engine"]()
    if side == "betty":  # one engine iteration per call of run(); no validation in between
        engine.valid_step = 10 ** 9
    else:
        engine.config.valid_step = 0
    return engine


def advance(side: str, engine, iterations: int) -> None:
    """Run ``iterations`` more engine iterations of one side's engine."""
    if side == "floor":
        engine.run(iterations)
    elif side == "betty":
        engine.train_iters = iterations  # Betty's run() counts from 1 each call
        engine.run()
    else:
        engine.config.train_iters = engine.global_step + iterations  # mlodsl's run() continues
        engine.run()


def measure(args: argparse.Namespace) -> dict:
    """Build every side's engine, run the rounds, and summarise."""
    import torch

    torch.set_num_threads(args.threads)
    sides = [s for s in args.sides if s != "betty" or expose_betty()]
    if len(sides) < len(args.sides):
        print("interleaved: no benchmarks/.betty-venv (python benchmarks/vs_betty.py --setup): "
              "Betty's side is left out", file=sys.stderr)
    engines = {s: build_engine(s, args.program, args.method, args.unroll, args.threads,
                               args.seed, args.hvp_iters) for s in sides}
    per_round: dict[str, list[float]] = {s: [] for s in sides}
    first_turn: dict[str, float] = {}
    steps = args.chunk * args.unroll  # engine iterations per turn
    for r in range(args.warmup_rounds + args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            c0, w0 = time.process_time(), time.perf_counter()
            advance(side, engines[side], steps)
            first_turn.setdefault(side, time.perf_counter() - w0)
            if r >= args.warmup_rounds:
                per_round[side].append((time.process_time() - c0) / args.chunk)
    base = "betty" if "betty" in sides else sides[0]
    result = {"program": args.program, "method": args.method, "unroll": args.unroll,
              "hvp_iters": args.hvp_iters,
              "threads": args.threads, "rounds": args.rounds, "chunk": args.chunk,
              "torch": torch.__version__, "loadavg": os.getloadavg()[0], "baseline": base,
              "sides": {}}
    for side in sides:
        times = per_round[side]
        ratios = [t / b for t, b in zip(times, per_round[base])]
        result["sides"][side] = {
            "ms_per_iter_median": 1e3 * statistics.median(times),
            "ms_per_iter_min": 1e3 * min(times),
            "ratio_to_baseline_median": statistics.median(ratios),
            "first_turn_s": first_turn[side],
            "ratio_to_floor_median": statistics.median(
                [t / f for t, f in zip(times, per_round["floor"])]) if "floor" in sides else None,
            "ratio_to_baseline_quartiles": statistics.quantiles(ratios, n=4)
            if len(ratios) > 1 else None,
        }
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", default="hpo", choices=["hpo", "reweight"])
    ap.add_argument("--method", default="darts",
                    choices=["darts", "neumann", "cg", "sama", "unroll"],
                    help="the .mlo sides' method; for 'unroll' Betty and the Python-API side "
                         "run darts (Betty has no unroll)")
    ap.add_argument("--unroll", type=int, default=1)
    ap.add_argument("--hvp-iters", type=int, default=1, help="neumann/cg iterations")
    ap.add_argument("--sides", default="betty,mlodsl,mlo,mlo_compiled,floor",
                    help="comma-separated, among " + ", ".join(SIDE_SCRIPTS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup-rounds", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=5, help="MLO iterations per turn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sides.split(",") if s and s not in SIDE_SCRIPTS]
    if unknown:
        ap.error(f"unknown side(s) {', '.join(unknown)}; known: {', '.join(SIDE_SCRIPTS)}")
    # a side whose program file does not exist (reweight has no .mlo twin) is left out
    args.sides = [s for s in args.sides.split(",") if s and (
        (s == "floor" and args.program == "hpo" and args.unroll == 1
         and args.method in ("darts", "neumann", "cg")) or
        (s != "floor" and (HERE / "programs" / f"{args.program}_{SIDE_SCRIPTS[s][0]}.py").exists()))]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    result = measure(args)
    rows = [{"side": s, **v} for s, v in result["sides"].items()]
    print(_common.format_table(
        rows, [("side", "side"), ("ms_per_iter_median", "median ms/it (cpu)"),
               ("ms_per_iter_min", "min ms/it"),
               ("ratio_to_baseline_median", f"ratio to {result['baseline']} (median)"),
               ("first_turn_s", "first turn s (wall)")] +
        ([("ratio_to_floor_median", "ratio to floor (median)")]
         if "floor" in result["sides"] and result["baseline"] != "floor" else []),
        floatfmt=".3g"))
    print(f"\n{args.program} {args.method} unroll {args.unroll}: {args.rounds} rounds of "
          f"{args.chunk} MLO iterations per side, in turns, in one process; ratio = the "
          f"side's CPU time over {result['baseline']}'s in the same round, median over rounds. "
          f"Load average {result['loadavg']:.2f}.")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
