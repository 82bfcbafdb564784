"""``mlodsl fmt FILE... [--check]``: rewrite .mlo files in canonical layout.

Without ``--check`` each file that changes is replaced (``reformatted FILE``) atomically: the
formatted text goes to a temporary file in the same folder, is flushed to disk and renamed over
the original, so a full disk or a kill leaves the original whole, never a part. With
``--check`` nothing is written: the files that would change are listed and the status is 1.
A file that does not parse is reported like ``mlodsl check`` does, with status 2.
"""
from __future__ import annotations

import os
import sys

__all__ = ["add_arguments", "main"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl fmt``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help=".mlo files to format")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list the files that would change (status 1)")


def main(args) -> int:
    """Run ``mlodsl fmt``; returns the exit status."""
    from mlodsl.compiler.front.files import read_source
    from mlodsl.compiler.front.fmt import format_program
    from mlodsl.compiler.front.parse import decode_source
    from mlodsl.diagnostics import MLOError, render_text
    from mlodsl.runtime.run_folder import atomic_write

    status = 0
    for path in args.files:
        data, problem = read_source(path)
        if problem is not None:
            sys.stderr.write(render_text([problem], {}) + "\n")
            status = 2
            continue
        text = None
        try:
            text = decode_source(data, path)
            formatted = format_program(text, path)
        except MLOError as err:
            sources = err.sources or ({path: text} if text else {})
            sys.stderr.write(render_text(err.diagnostics, sources) + "\n")
            status = 2
            continue
        if formatted == text:
            continue
        if args.check:
            sys.stdout.write(f"would reformat {path}\n")
            status = max(status, 1)
            continue
        try:
            atomic_write(os.path.realpath(path), formatted)  # a symlink stays a symlink
        except OSError as exc:
            sys.stderr.write(f"mlodsl: error: cannot write '{path}': {exc.strerror or exc} "
                             "(the file is unchanged)\n")
            status = 2
            continue
        sys.stdout.write(f"reformatted {path}\n")
    return status
