"""Reading ``.mlo`` files for the command line, with one-line errors instead of tracebacks."""
from __future__ import annotations

import os

from mlodsl.compiler.front.parse import MAX_SOURCE_BYTES
from mlodsl.diagnostics import Diagnostic, Span

__all__ = ["read_source"]


def read_source(path: str) -> tuple[bytes | None, Diagnostic | None]:
    """The bytes of ``path``, or ``(None, diagnostic)`` saying why it cannot be read.

    A directory, a missing file or an unreadable one each get a clear one-line error. Files
    much larger than any program are not read whole: the parser refuses them anyway.
    """
    def fail(why: str) -> tuple[None, Diagnostic]:
        return None, Diagnostic(path, None, "error", f"cannot read '{path}': {why}")

    if os.path.isdir(path):
        return fail("it is a directory")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SOURCE_BYTES + 1)
            if len(data) > MAX_SOURCE_BYTES:
                size = max(os.fstat(fh.fileno()).st_size, len(data))
                return None, Diagnostic(
                    path, Span(1, 1, 1, 2), "error",
                    f"file is too large ({size / 1048576:.1f} MB; "
                    f"the limit is {MAX_SOURCE_BYTES // 1048576} MB)")
    except FileNotFoundError:
        return fail("no such file")
    except PermissionError:
        return fail("permission denied")
    except OSError as exc:
        return fail(exc.strerror or str(exc))
    return data, None
