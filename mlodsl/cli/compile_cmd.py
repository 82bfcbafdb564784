"""``mlodsl compile FILE [--json] [--show-graphs] [--set T=V]...``: print a program's plan.

Compiling resolves the imports and builds every module, optimizer and data source (it runs
the user's code), lowers each loss to a ``torch.fx`` graph, and prints the execution plan:
levels, parameter counts, the schedule, each edge's hypergradient method (and where it came
from), what each loss reads, and the engine settings. ``--show-graphs`` adds the fx code of
every loss graph; ``--json`` prints the same as one JSON object. Exit status 2 on an error in
the program.
"""
from __future__ import annotations

import sys

__all__ = ["add_arguments", "main", "print_warnings"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl compile``."""
    parser.add_argument("file", metavar="FILE", help="the .mlo program")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--show-graphs", action="store_true",
                        help="print the torch.fx code of every loss graph")
    parser.add_argument("--set", action="append", default=[], metavar="NAME.FIELD=VALUE",
                        help="override a field (repeatable), e.g. engine.iterations=100")


def print_warnings(plan) -> None:
    """Render the plan's warnings on stderr."""
    if plan.warnings:
        from mlodsl.diagnostics import render_text
        sys.stderr.write(render_text(plan.warnings, plan.sources.sources) + "\n")


def main(args) -> int:
    """Run ``mlodsl compile``; returns the exit status."""
    import json

    from mlodsl.compiler.api import compile as compile_program

    plan = compile_program(args.file, overrides=args.set)
    print_warnings(plan)
    if args.json:
        sys.stdout.write(json.dumps(plan.to_json(show_graphs=args.show_graphs), indent=2,
                                    default=str) + "\n")
    else:
        sys.stdout.write(plan.describe(show_graphs=args.show_graphs) + "\n")
    return 0
