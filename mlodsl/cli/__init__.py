"""The ``mlodsl`` command line: ``check | fmt | compile | run | graph | plot``.

Each subcommand lives in its own module of this package, exposing ``add_arguments(parser)``
and ``main(args) -> int``. Modules are imported only when their subcommand runs, so that
``mlodsl check`` never pays for importing torch.

Exit status: 0 success, 1 a run failure, 2 an error in the user's program or command line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from mlodsl.diagnostics import MLOError

SUBCOMMANDS = {
    "check": "check .mlo files: syntax, names, the depends graph, methods (no torch)",
    "fmt": "format .mlo files canonically",
    "compile": "compile a .mlo file and print its execution plan",
    "run": "compile and run a .mlo program",
    "graph": "draw the problem hierarchy of a .mlo file (svg, png or dot)",
    "plot": "plot the losses and validation metrics of a run folder",
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors reported as status 2 in our own format."""

    def error(self, message):  # noqa: D102 - argparse hook
        self.print_usage(sys.stderr)
        sys.stderr.write(f"mlodsl: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand's options."""
    parser = _Parser(prog="mlodsl", description="multilevel optimization for PyTorch")
    from mlodsl import __version__
    parser.add_argument("--version", action="version", version=f"mlodsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in SUBCOMMANDS.items():
        try:
            module = _module(name)
        except ModuleNotFoundError as err:
            # A subcommand not installed yet is left out; any other missing module is a bug.
            if err.name != f"mlodsl.cli.{name}_cmd":
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
    return parser


def _module(name: str):
    return importlib.import_module(f"mlodsl.cli.{name}_cmd")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the requested subcommand's parser when possible (keeps `check` torch-free).
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(_module(args.command).main(args) or 0)
    except MLOError as err:
        sys.stderr.write(err.render() + "\n")
        return err.exit_status
    except KeyboardInterrupt:
        sys.stderr.write("mlodsl: interrupted\n")
        return 130
    except Exception as err:  # a bug in mlodsl or in user code: one line unless debugging
        if os.environ.get("MLODSL_DEBUG"):
            raise
        sys.stderr.write(f"mlodsl: error: {type(err).__name__}: {err}\n"
                         "  hint: set MLODSL_DEBUG=1 to see the Python traceback\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
