"""The docs are true to behaviour (issue 15): every command, transcript and program block of
README.md, docs/tutorial.md and docs/cli.md runs (cheaply: a long run is cut to 2 iterations,
its folders go to a temporary directory), what a transcript shows has the shape of what the
command prints, a block labelled with a file is that file, and every position a doc quotes for
a misspelt name is where `mlodsl check` reports it."""
from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path

import pytest

from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/tutorial.md", "docs/cli.md"]
# Commands a doc shows that the test does not run, and why.
NOT_RUN = {
    "pip install": "installs packages (the CI's set-up does)",
    "python -m pytest": "the test suite itself",
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(doc: str) -> list[tuple[str, str, str]]:
    """``(language, text, the line before)`` of each fenced block of ``doc``."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = [ln for ln in text[:m.start()].splitlines() if ln.strip()]
        out.append((m.group(1), m.group(2), before[-1] if before else ""))
    return out


def _is_program(lang: str, text: str) -> bool:
    return lang in ("", "mlo") and re.search(r"^problem \w+", text, re.M) is not None


class _Runner:
    """Runs a doc's commands in order, run folders and images under ``tmp``."""

    def __init__(self, tmp: Path, capsys, monkeypatch):
        self.tmp, self.capsys = tmp, capsys
        monkeypatch.chdir(ROOT)

    def path(self, token: str) -> str:
        if token.startswith("runs/") or token.endswith((".png", ".svg", ".pdf")):
            return str(self.tmp / token)
        return token

    def mlodsl(self, argv: list[str]) -> tuple[str, str]:
        argv = [self.path(a) for a in argv]
        if "--iterations" in argv:
            argv[argv.index("--iterations") + 1] = "2"
        if argv[0] == "run":
            argv.append("--quiet")
            if "--out" not in argv:
                argv += ["--out", str(self.tmp / "runs" / "default")]
        status, out, err = run_cli(argv, self.capsys)
        assert status == 0, f"mlodsl {' '.join(argv)}: status {status}\n{err}"
        return out, err

    def python_script(self, argv: list[str]) -> None:
        """``python examples/x/y.py ARGS`` or ``python -m examples.x.y ARGS``: an example's
        ``main`` (its runs cut to 2 iterations)."""
        import importlib
        module = argv[1] if argv[0] == "-m" else argv[0][:-3].replace("/", ".")
        args = argv[2:] if argv[0] == "-m" else argv[1:]
        assert module == "examples.hpo.hpo_python", f"no cheap way to run {argv}"
        main = importlib.import_module(module).main
        assert main(args + ["--iterations", "2", "--valid-step", "1"]) == 0
        self.capsys.readouterr()

    def shell_line(self, line: str) -> None:
        for command in (c.strip() for c in line.split("&&")):
            argv = shlex.split(command, comments=True)
            if not argv or any(" ".join(argv).startswith(skip) for skip in NOT_RUN):
                continue
            if argv[0] == "mlodsl":
                self.mlodsl(argv[1:])
            elif argv[0] == "python":
                self.python_script(argv[1:])
            else:
                raise AssertionError(f"a doc shows a command the test cannot run: {argv}")

    def python_block(self, code: str) -> None:
        code = re.sub(r"\b(train_iters|iterations)=\d+", r"\1=2", code)
        code = re.sub(r"\bvalid_step=\d+", "valid_step=1", code)
        code = code.replace('"runs/', f'"{self.tmp}/runs/')
        exec(compile(code, "<doc block>", "exec"), {"__name__": "doc_block"})
        self.capsys.readouterr()


def _shape(line: str) -> str:
    """A printed line with numbers as ``#`` and parenthesised paths as ``(PATH)``."""
    line = re.sub(r"\((/|[A-Za-z]:\\)[^)]*\)", "(PATH)", line)
    line = re.sub(r"-?\d[\d,]*(\.\d+)?(e[-+]?\d+)?", "#", line)
    return " ".join(line.split())


def _check_transcript(runner: _Runner, text: str) -> None:
    command, shown = None, []
    for line in text.splitlines() + ["$"]:
        if line.startswith("$"):
            if command is not None:
                argv = shlex.split(command)[1:]
                out, err = runner.mlodsl(argv)
                # a run's numbers vary (time, losses): compare shapes; the rest exactly
                same = _shape if argv[0] in ("run", "show") else (lambda ln: " ".join(ln.split()))
                printed = {same(ln) for ln in (out + err).splitlines()}
                for s in shown:
                    if s.strip() != "...":
                        assert same(s) in printed, \
                            f"`{command}` does not print a line like {s!r}:\n{out}"
            command, shown = line[1:].strip() or None, []
        else:
            shown.append(line)


@pytest.mark.parametrize("doc", DOCS)
def test_every_block_of_the_doc_runs(doc, tmp_path, capsys, monkeypatch):
    runner = _Runner(tmp_path, capsys, monkeypatch)
    ran = 0
    for lang, text, before in _blocks(doc):
        if _is_program(lang, text):
            label = re.search(r"`([\w/.]+\.mlo)`[^`]*:$", before)
            if label:  # "`examples/hpo/hpo.mlo`:" then the block: it is that file
                assert text == (ROOT / label.group(1)).read_text(), \
                    f"{doc}: the block labelled {label.group(1)} is not that file"
                path = ROOT / label.group(1)
            else:
                path = tmp_path / "block.mlo"
                path.write_text(text)
            runner.mlodsl(["check", str(path)])
        elif lang in ("bash", "sh"):
            for line in text.splitlines():
                runner.shell_line(line)
        elif lang == "python" and "mlodsl/" not in before:
            runner.python_block(text)
        elif text.startswith("$ mlodsl"):
            _check_transcript(runner, text)
        else:
            continue
        ran += 1
    assert ran, f"{doc} has no block the test runs"


CLAIM = re.compile(r"\b([\w.]+\.mlo):(\d+):(\d+): error: unknown name '(\w+)'")


@pytest.mark.parametrize("doc", DOCS + ["docs/language.md"])
def test_positions_quoted_for_a_misspelt_name_are_where_check_reports_it(doc, tmp_path,
                                                                         capsys):
    claims = CLAIM.findall((ROOT / doc).read_text(encoding="utf-8"))
    for name, line, column, wrong in claims:
        (source,) = [p for p in (ROOT / "examples").rglob(name)]
        lines = source.read_text().splitlines(keepends=True)
        i, c = int(line) - 1, int(column) - 1
        right = re.match(r"\w+", lines[i][c:]).group(0)
        assert difflib.SequenceMatcher(None, right, wrong).ratio() > 0.8, \
            f"{doc}: {name}:{line}:{column} is '{right}', not a word that '{wrong}' misspells"
        lines[i] = lines[i][:c] + wrong + lines[i][c + len(right):]
        edited = tmp_path / name
        edited.write_text("".join(lines))
        status, _, err = run_cli(["check", edited], capsys)
        assert status == 2 and f"{edited}:{line}:{column}: error: unknown name '{wrong}'" in err
