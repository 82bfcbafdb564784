"""The ``mlodsl`` command line: ``check | fmt | compile | run | show | graph | plot``.

Each subcommand lives in its own module of this package, exposing ``add_arguments(parser)``
and ``main(args) -> int``. Modules are imported only when their subcommand runs, so that
``mlodsl check`` never pays for importing torch.

Exit status: 0 success, 1 a run failure, 2 an error in the user's program or command line.
With ``--json`` (``check --format json``) every error, whatever raised it, is printed as JSON on
stdout: a list of diagnostics for ``check``, else ``{"ok": false, "exit_status": N,
"diagnostics": [...]}``.
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
    "show": "print the results of a run folder (its summary)",
    "graph": "draw the problem hierarchy of a .mlo file (svg, png or dot)",
    "plot": "plot the losses and validation metrics of a run folder",
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors reported as status 2 in our own format."""

    json_errors = False  # set by main() when the command line asks for JSON

    def error(self, message):  # noqa: D102 - argparse hook
        if _Parser.json_errors:
            from mlodsl.diagnostics import Diagnostic
            _json_error("", [Diagnostic(None, None, "error", message,
                                        "see mlodsl --help")], 2)
            raise SystemExit(2)
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
    _Parser.json_errors = _asks_for_json(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    json_mode = bool(getattr(args, "json", False) or getattr(args, "format", None) == "json")
    import warnings
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(_module(args.command).main(args) or 0)
    except MLOError as err:
        if json_mode:
            return _json_error(args.command, err.diagnostics, err.exit_status)
        _write_err(err.render())
        return err.exit_status
    except KeyboardInterrupt:
        _write_err("mlodsl: interrupted")
        return 130
    except Exception as err:  # a bug in mlodsl or in user code: one line unless debugging
        if os.environ.get("MLODSL_DEBUG"):
            raise
        hint = "set MLODSL_DEBUG=1 to see the Python traceback"
        message = f"{type(err).__name__}: {' '.join(str(err).split())}"
        if json_mode:
            from mlodsl.diagnostics import Diagnostic
            return _json_error(args.command, [Diagnostic(None, None, "error", message, hint)], 1)
        _write_err(f"mlodsl: error: {message}\n  hint: {hint}")
        return 1
    finally:
        warnings.showwarning = previous


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings on stderr: an MLOWarning (already ``FILE:LINE:COL: warning: ...``) as is, any
    other as ``mlodsl: warning: Category: message``, each on lines of its own."""
    from mlodsl.diagnostics import MLOWarning

    if issubclass(category, MLOWarning):
        _write_err(str(message))
    else:
        _write_err(f"mlodsl: warning: {category.__name__}: {message}")


def _asks_for_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON output (``--json``, ``--format json``)."""
    return "--json" in argv or "--format=json" in argv or any(
        a == "--format" and b == "json" for a, b in zip(argv, argv[1:]))


def _write_err(text: str) -> None:
    """``text`` on stderr as whole lines (what follows it starts on a line of its own)."""
    sys.stdout.flush()
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def _json_error(command: str, diagnostics, status: int) -> int:
    """Print an error as JSON on stdout (``--json``); return ``status``."""
    import json

    from mlodsl.diagnostics import render_json

    items = json.loads(render_json(diagnostics))
    data = items if command == "check" else {"ok": False, "exit_status": status,
                                             "diagnostics": items}
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
