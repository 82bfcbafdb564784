"""The program corpus: bad programs against their golden diagnostics, good programs clean,
and the formatter's round trip on every good program."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlodsl.compiler.front.check import check
from mlodsl.compiler.front.fmt import format_program
from mlodsl.compiler.front.parse import parse

from tests.support.corpus import BAD, GOOD, ROOT, golden_lines


def test_corpus_sizes():
    assert len(BAD) >= 40
    assert len(GOOD) >= 5


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_program_matches_golden(path: Path):
    expected = path.with_suffix(".expected").read_text().splitlines()
    assert expected, "a bad program must have at least one diagnostic"
    assert golden_lines(path) == expected


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_program_golden_is_sorted(path: Path):
    lines = path.with_suffix(".expected").read_text().splitlines()
    keys = [tuple(int(n) for n in line.split(":")[:2]) for line in lines]
    assert keys == sorted(keys)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_program_is_clean(path: Path):
    assert check(parse(path.read_text(), path.name)) == []


def test_language_md_program_is_in_the_corpus_verbatim():
    text = (ROOT.parent / "shared" / "LANGUAGE.md")
    if not text.exists():
        pytest.skip("LANGUAGE.md is not available here")
    block = re.search(r"## 1\. A whole program\n\n```\n(.*?)```", text.read_text(), re.S)
    assert (ROOT / "tests/programs/good/hpo.mlo").read_text() == block.group(1)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_fmt_round_trip_and_idempotence(path: Path):
    src = path.read_text()
    once = format_program(src, path.name)
    assert parse(once, path.name) == parse(src, path.name)
    assert format_program(once, path.name) == once
    # Comments survive formatting, in order.
    assert [c.text for c in parse(once).comments] == [c.text for c in parse(src).comments]


def test_language_md_program_is_already_canonical():
    src = (ROOT / "tests/programs/good/hpo.mlo").read_text()
    assert format_program(src) == src


@pytest.mark.parametrize("path", [p for p in BAD if p.stem.startswith(("unknown", "dup",
                                                                        "cycle", "zero"))],
                         ids=lambda p: p.stem)
def test_fmt_round_trip_on_parseable_bad_programs(path: Path):
    src = path.read_text()
    assert parse(format_program(src)) == parse(src)
