"""Running `mlodsl` in subprocesses for the run-folder and fault tests.

``program(tmp_path, ...)`` writes a small `.mlo` program (parts in
:mod:`tests.support.run_parts`); ``mlodsl(...)`` runs the CLI to completion, ``start(...)`` in
the background; ``file_size_limit(n)`` is a ``preexec_fn`` that simulates a full disk (writes
past ``n`` bytes fail with EFBIG instead of killing the process).
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """\
from tests.support.run_parts import Tiny, data, mse, fail_on_rank, validation_loss

let n = 4
let width = {width}
problem inner {{
    module     = Tiny(n, width)
    optimizer  = SGD(lr=0.05)
    data       = data(n)
    batch_size = 4
    loss       = {loss}
    log_every  = 1
}}
engine {{
    iterations = {iterations}
    seed = 0
    checkpoint_every = {every}
    checkpoint_keep = {keep}
    validate = validation_loss(inner)
    validate_every = {validate_every}
{extra}}}
"""


def program(folder: Path, name: str = "prog.mlo", *, iterations: int = 12, every: int = 4,
            delay: float = 0.0, width: int = 1, loss: str | None = None,
            validate_every: int | None = None, keep: int = 2, extra: str = "") -> Path:
    """Write the test program to ``folder/name``; ``delay`` seconds per training step."""
    path = Path(folder) / name
    path.write_text(PROGRAM.format(iterations=iterations, every=every, width=width,
                                   loss=loss or f"mse({delay})", keep=keep, extra=extra,
                                   validate_every=validate_every or every),
                    encoding="utf-8")
    return path


def env() -> dict:
    """The environment of a CLI subprocess: this checkout importable, one thread."""
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                                     e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.pop("MLODSL_DEBUG", None)
    return e


def mlodsl(*args, timeout: float = 180, preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``python -m mlodsl ARGS`` (cwd: the repository root) to completion."""
    return subprocess.run([sys.executable, "-m", "mlodsl", *map(str, args)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process (no torch start-up cost): ``(status, stdout, stderr)``."""
    from mlodsl.cli import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def start(*args) -> subprocess.Popen:
    """Start ``python -m mlodsl ARGS`` in the background (stdout/stderr to pipes)."""
    return subprocess.Popen([sys.executable, "-m", "mlodsl", *map(str, args)], cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll ``predicate()`` until true; fail if ``proc`` exits first or time runs out."""
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) first:\n"
                                 + proc.stderr.read())
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def file_size_limit(nbytes: int):
    """A ``preexec_fn``: files may not grow past ``nbytes`` (a full disk, for the child)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def records(run_dir: Path) -> list[dict]:
    """The JSON records of a run folder's metrics.jsonl (lines that parse)."""
    import json

    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_bytes().splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def params(checkpoint: Path) -> dict:
    """The module parameters stored in a checkpoint file."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {f"{p}.{k}": v for p, s in state["problems"].items() for k, v in s["module"].items()}
