"""The design card's header form ``problem NAME <settings> depends ...``: parsing, checks, fmt."""
from __future__ import annotations

import pytest

from mlodsl.compiler.front.check import check
from mlodsl.compiler.front.fmt import format_program
from mlodsl.compiler.front.parse import parse
from mlodsl.diagnostics import MLOError


def program(upper_header: str = "", edge: str = "", lower_header: str = "",
            upper_fields: str = "") -> str:
    """Two problems, ``hpo`` over ``clf``, with the given header, edge suffix and fields."""
    return (
        "from lib import M, d\n"
        f"problem clf {lower_header} {{\n module = M()\n optimizer = SGD(lr=1)\n data = d()\n"
        " loss(x, y) = clf(x) + hpo()\n}\n"
        f"problem hpo {upper_header} depends clf {edge} {{\n module = M()\n"
        " optimizer = SGD(lr=1)\n data = d()\n loss(x, y) = clf(x)\n"
        f"{upper_fields}}}\n"
        "engine { iterations = 10 }\n")


def diagnostics(src: str, severity: str | None = None) -> list[str]:
    """``LINE:COL: message`` of each diagnostic (of one severity)."""
    return [f"{d.span.line}:{d.span.column}: {d.message}" for d in check(parse(src))
            if severity is None or d.severity == severity]


def test_the_header_parses_into_settings_and_checks_clean():
    src = program('<type="neumann", step=2, neumann_iterations=3, gradient_clipping=1.0,>')
    hpo = parse(src).problem("hpo")
    assert [(s.name, s.value.value) for s in hpo.settings] == [
        ("type", "neumann"), ("step", 2), ("neumann_iterations", 3), ("gradient_clipping", 1.0)]
    assert hpo.setting("unroll_steps").name == "step"
    assert diagnostics(src) == []


def test_fmt_keeps_the_header_form_and_round_trips():
    src = program('< type = "darts",step=1 >').replace("depends clf", "depends  clf")
    out = format_program(src)
    assert 'problem hpo <type="darts", step=1> depends clf {' in out
    assert parse(out) == parse(src)
    assert format_program(out) == out
    plain = format_program(program())
    assert "<" not in plain  # no header written where the user wrote none


def test_an_unknown_key_is_an_error_with_did_you_mean_at_its_column():
    src = program("<type=\"darts\", unrol_steps=2>")
    [d] = [d for d in check(parse(src)) if d.severity == "error"]
    assert "unknown setting 'unrol_steps'" in d.message and d.hint == "did you mean 'unroll_steps'?"
    assert (d.span.line, d.span.column) == (8, 28)


@pytest.mark.parametrize("header,expected", [
    ('<type="dart">', "setting 'type' of 'hpo': unknown hypergradient method 'dart'"),
    ("<step=0>", "setting 'step' of 'hpo' must be a positive integer, got 0"),
    ("<darts_alpha=-1.0>", "setting 'darts_alpha' of 'hpo' must be a number > 0, got -1.0"),
    ('<first_order="yes">', "setting 'first_order' of 'hpo' must be True or False"),
    ('<precision="fp8">', "setting 'precision' of 'hpo' must be one of"),
])
def test_a_bad_value_is_an_error_at_the_value(header, expected):
    src = program(header)
    [d] = [d for d in check(parse(src)) if d.severity == "error"]
    assert expected in d.message
    assert d.span.column == header.index("=") + 14  # "problem hpo " is 12 columns, then "<"


def test_step_and_unroll_steps_together_are_one_setting_given_twice():
    [msg] = diagnostics(program("<step=1, unroll_steps=1>"), "error")
    assert "given twice" in msg and "'step' and 'unroll_steps' are the same setting" in msg


def test_a_setting_contradicting_via_is_an_error_at_the_setting():
    [msg] = diagnostics(program('<type="darts">', "via neumann()"), "error")
    assert msg.startswith("8:19: ") and "type='darts'" in msg and "via neumann()" in msg


def test_a_setting_agreeing_with_via_and_every_is_fine():
    assert diagnostics(program('<type="neumann", step=3>', "every 3 via neumann()")) == []


def test_a_setting_contradicting_every_is_an_error_at_the_setting():
    [msg] = diagnostics(program("<step=2>", "every 3"), "error")
    assert msg.startswith("8:19: ") and "step=2" in msg and "'every 3'" in msg


def test_a_method_knob_contradicting_the_via_call_is_an_error():
    [msg] = diagnostics(program("<neumann_iterations=5>", "via neumann(iterations=3)"), "error")
    assert "neumann_iterations=5" in msg and "neumann(iterations=3)" in msg


def test_a_lower_header_speaks_for_the_edge_above_it_and_contradicts_its_via():
    src = program(edge="via cg()", lower_header='<type="darts">')
    [msg] = diagnostics(src, "error")
    assert msg.startswith("2:19: ") and "the edge 'hpo depends clf'" in msg


def test_headers_of_both_ends_disagreeing_warn_that_the_lower_wins():
    src = program('<type="neumann">', lower_header='<type="darts">')
    [msg] = diagnostics(src, "warning")
    assert "uses the lower's 'darts'" in msg


@pytest.mark.parametrize("setting,field", [("gradient_clipping=1.0", "grad_clip = 2.0"),
                                           ("gradient_accumulation=2", "grad_accum = 3"),
                                           ("log_step=5", "log_every = 10"),
                                           ('type="cg"', "hypergrad = darts()")])
def test_a_setting_and_the_field_with_the_same_meaning_must_agree(setting, field):
    [msg] = diagnostics(program(f"<{setting}>", upper_fields=f" {field}\n"), "error")
    assert "hpo" in msg


def test_edge_settings_on_a_problem_without_edges_warn():
    src = ("from lib import M, d\nproblem p <type=\"cg\"> {\n module = M()\n optimizer = SGD()\n"
           " data = d()\n loss(x) = p(x)\n}\nengine { iterations = 1 }\n")
    [msg] = diagnostics(src, "warning")
    assert msg.startswith("2:12: ") and "has no effect" in msg


def test_names_in_settings_are_checked_and_lets_are_followed():
    src = "let k = 0\n" + program("<step=k, cg_iterations=nope>")
    msgs = diagnostics(src, "error")
    assert any("setting 'step' of 'hpo' must be a positive integer, got 0" in m for m in msgs)
    assert any("unknown name 'nope'" in m for m in msgs)


def test_an_unclosed_header_is_a_syntax_error():
    with pytest.raises(Exception) as err:
        parse('problem p <type="darts" { }\n')
    assert "'>'" in str(err.value)


def test_a_header_may_span_lines_and_an_unclosed_one_points_at_its_bracket():
    src = program('<type="neumann",  # the method\n    step=2,\n>')
    assert [s.name for s in parse(src).problem("hpo").settings] == ["type", "step"]
    assert diagnostics(src) == []
    with pytest.raises(MLOError) as err:
        parse('problem p <type="darts"\nproblem q { }\n')
    [d] = err.value.diagnostics
    assert (d.span.line, d.hint) == (2, "the '<' at line 1, column 11 is not closed")


def test_fmt_moves_comments_inside_a_multi_line_header_above_it():
    src = ('problem p <\n    type="darts",  # the method\n    step=1,\n> depends q {  # here\n'
           '    module = M()\n}\n')
    out = format_program(src)
    assert out.splitlines()[:3] == ["# the method",
                                    'problem p <type="darts", step=1> depends q {  # here',
                                    "    module = M()"]
    assert format_program(out) == out and parse(out) == parse(src)
