"""``mlodsl check FILE... [--format text|json]``: parse and check .mlo files, without torch.

Exit status 0 when no file has an error (warnings allowed), 2 otherwise. Diagnostics go to
stderr as text (``FILE:LINE:COL: error: ...``, the source line, a caret, a hint) or to stdout
as one JSON list for editors; a clean file gets a one-line summary on stdout.
"""
from __future__ import annotations

import sys

__all__ = ["add_arguments", "main", "check_file"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl check``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help=".mlo files to check")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="diagnostics as text (default) or as a JSON list for editors")


def check_file(path: str):
    """Parse and check one file: ``(diagnostics, source text or None, program or None)``."""
    from mlodsl.compiler.front.check import check
    from mlodsl.compiler.front.files import read_source
    from mlodsl.compiler.front.parse import decode_source, parse
    from mlodsl.diagnostics import MLOError

    data, problem = read_source(path)
    if problem is not None:
        return [problem], None, None
    text = None
    try:
        text = decode_source(data, path)
        program = parse(text, path)
    except MLOError as err:
        return err.diagnostics, err.sources.get(path, text), None
    return check(program), text, program


def main(args) -> int:
    """Run ``mlodsl check``; returns the exit status."""
    from mlodsl.compiler.front.check import summary
    from mlodsl.diagnostics import render_json, render_text

    status = 0
    collected = []
    for path in args.files:
        diags, text, program = check_file(path)
        collected.extend(diags)
        n_err = sum(d.severity == "error" for d in diags)
        n_warn = sum(d.severity == "warning" for d in diags)
        if n_err:
            status = 2
        if args.format == "text":
            if diags:
                sys.stderr.write(render_text(diags, {path: text} if text is not None else {})
                                 + "\n")
            if not n_err and program is not None:
                extra = f", {n_warn} warning" + ("s" if n_warn != 1 else "") if n_warn else ""
                sys.stdout.write(f"{path}: ok ({summary(program)}{extra})\n")
    if args.format == "json":
        sys.stdout.write(render_json(collected) + "\n")
    return status
