"""Property tests: whatever text the front end gets, the only exception is MLOError.

Random mutations of the good programs (token deletions, insertions, swaps, duplications)
and random text are parsed, checked and formatted. Example counts are modest to keep the
suite fast; the corpus and the mutations cover the interesting shapes.
"""
from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlodsl.compiler.front.check import check
from mlodsl.compiler.front.fmt import format_program
from mlodsl.compiler.front.parse import parse
from mlodsl.diagnostics import Diagnostic, MLOError

from tests.support.corpus import GOOD

SOURCES = [p.read_text() for p in GOOD]
TOKEN = re.compile(r"\s+|#[^\n]*|\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z_]\w*|\d[\d_.eE+-]*|\*\*|.", re.S)
PIECES = ["problem", "engine", "depends", "via", "every", "let", "import", "from", "as", "{",
          "}", "(", ")", "[", "]", ",", "=", ";", "\n", "loss", "module", "x", "-", "**", "@",
          "0", "1.5", '"s"', "#c", "darts()", "level", "__x__", ".", "'", "\\", "é", "\x00"]
FAST = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def front_end(text) -> None:
    """Parse, check and format; anything but MLOError propagates and fails the test."""
    try:
        program = parse(text, "fuzz.mlo")
    except MLOError as err:
        assert err.diagnostics and all(isinstance(d, Diagnostic) for d in err.diagnostics)
        assert any(d.severity == "error" for d in err.diagnostics)
        err.render(getattr(err, "sources", {}))
        return
    diags = check(program)
    assert diags == sorted(diags, key=Diagnostic.sort_key)
    formatted = format_program(text if isinstance(text, str) else text.decode("utf-8-sig"))
    assert parse(formatted) == program


@st.composite
def mutated(draw):
    tokens = TOKEN.findall(draw(st.sampled_from(SOURCES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap", "duplicate"]))
        i = draw(st.integers(0, max(len(tokens) - 1, 0)))
        if kind == "delete" and tokens:
            del tokens[i]
        elif kind == "insert":
            tokens.insert(i, draw(st.sampled_from(PIECES)))
        elif kind == "swap" and len(tokens) > 1:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "duplicate" and tokens:
            tokens.insert(i, tokens[i])
    return "".join(tokens)


@FAST
@given(mutated())
def test_mutated_programs_only_raise_mloerror(text):
    front_end(text)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(PIECES + [" ", "a", "b", "2"]), max_size=40).map("".join))
def test_token_soup_only_raises_mloerror(text):
    front_end(text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_random_text_only_raises_mloerror(text):
    front_end(text)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_mloerror(data):
    try:
        program = parse(data, "fuzz.mlo")
    except MLOError:
        return
    check(program)
