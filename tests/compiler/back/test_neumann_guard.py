"""neumann guards itself (issue 15): on the 5-feature ridge problem (true weights
[1, -2, 0, 0, 3], features standard normal, so lambda_max(H) ~ 2.7) `alpha=1.0` makes the series
diverge: a warning at the edge's position names a safe alpha, once. A `.mlo` program's default
alpha is the lower's learning rate (0.1 here), which recovers the weights."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import mlodsl
from mlodsl.diagnostics import MLOWarning
from tests.support.cli import RIDGE, run_cli

TRUE_W = torch.tensor([1.0, -2.0, 0.0, 0.0, 3.0])


def _run(overrides, iterations=60, program=RIDGE):
    plan = mlodsl.compile(str(program), overrides=[*overrides, f"engine.iterations={iterations}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan.run(console=False)
        except mlodsl.MLOError:
            pass  # a diverged run: the guard's warning came first
    return plan, [w for w in caught if issubclass(w.category, MLOWarning)]


def test_default_alpha_is_the_lowers_lr_and_recovers_the_weights():
    plan, caught = _run([], iterations=100)
    (edge,) = plan.edges
    assert edge.args == {"iterations": 5, "alpha": 0.1}
    assert edge.note == "alpha = the lr of 'weights'"
    assert "alpha = the lr of 'weights'" in plan.describe()
    assert caught == []
    assert torch.allclose(plan.problems["weights"].module.w.detach(), TRUE_W, atol=0.1)


def test_an_explicit_alpha_is_kept_and_python_programs_keep_one():
    plan = mlodsl.compile(RIDGE, overrides=["decays.via=neumann(iterations=5, alpha=0.05)"])
    assert plan.edges[0].args["alpha"] == 0.05 and plan.edges[0].note == ""
    assert mlodsl.Config(type="neumann").neumann_alpha == 1.0


@pytest.mark.parametrize("via, column", [("neumann(alpha=1.0)", 12),
                                         ("neumann(iterations=5, alpha=1.0)", 12)])
def test_a_diverging_series_warns_once_at_the_edge_with_a_safe_alpha(via, column):
    _, caught = _run([f"decays.via={via}"])
    (w,) = caught  # once, however many steps diverged
    text = str(w.message)
    head, hint = text.splitlines()
    assert head.startswith(f"--set decays.via:1:{column}: warning: the Neumann series of the "
                           "hypergradient through 'weights' diverges")
    assert "alpha=1.0 is above 2/lambda_max(H) ~ " in head
    bound = float(head.split("2/lambda_max(H) ~ ")[1].split(",")[0])
    assert 0.6 < bound < 0.95  # lambda_max(H) of this problem is about 2.6
    safe = float(hint.split("neumann(alpha=")[1].split(")")[0])
    assert 0 < safe < bound / 2 + 1e-9  # about 1/lambda_max: well inside the bound
    _, again = _run([f"decays.via=neumann(iterations=5, alpha={safe})"])
    assert again == []


def test_the_warning_points_into_the_mlo_file_through_the_cli(tmp_path, capsys):
    program = tmp_path / "ridge.mlo"
    program.write_text(RIDGE.read_text().replace("neumann(iterations=5)",
                                                 "neumann(iterations=5, alpha=1.0)"))
    (tmp_path / "ridge_parts.py").write_text((RIDGE.parent / "ridge_parts.py").read_text())
    status, _, stderr = run_cli(["run", program, "--iterations", 30, "--quiet",
                                 "--out", tmp_path / "run"], capsys)
    lines = stderr.splitlines()
    (i,) = [k for k, line in enumerate(lines) if ": warning: the Neumann series" in line]
    column = program.read_text().splitlines()[11].index("neumann(") + 1  # line 12: the edge
    assert lines[i].startswith(f"{program}:12:{column}: warning:")
    assert lines[i + 1].startswith("  hint: use neumann(alpha=0.")
    assert "Traceback" not in stderr and status in (0, 1)


def test_cg_warns_once_when_the_lowers_hessian_is_not_positive_definite(tmp_path):
    # -3 |w|^2 makes the lower's Hessian 2 X^T X / n - 6 I + diag(decay): indefinite. (A loss
    # expression is code, which an override may not be: the program itself is changed.)
    text = RIDGE.read_text().replace(
        "loss(x, y) = F.mse_loss(weights(x), y) + penalty(weights, decays())",
        "loss(x, y) = F.mse_loss(weights(x), y) + penalty(weights, decays()) "
        "- 3.0 * (weights.w ** 2).sum()")
    concave = tmp_path / "ridge.mlo"
    concave.write_text(text)
    shutil.copy(RIDGE.parent / "ridge_parts.py", tmp_path)
    _, caught = _run(["decays.via=cg(iterations=5)"], iterations=3, program=concave)
    (w,) = caught
    head, hint = str(w.message).splitlines()
    assert head.startswith("--set decays.via:1:12: warning: cg met non-positive curvature of "
                           "the loss of 'weights'")
    assert hint.startswith("  hint: let the lower converge more per upper step")
    _, caught = _run(["decays.via=cg(iterations=5)"], iterations=3)
    assert caught == []  # convex: no warning


def test_the_self_checks_run_on_the_first_ten_calls_then_every_tenth_until_a_warning():
    from mlodsl.runtime.hypergrad.registry import HypergradRequest

    request = HypergradRequest(engine=None, lower=None, targets=[], v=[], state={})
    calls = [k for k in range(1, 41) if request.watching("neumann")]
    assert calls == [*range(1, 11), 20, 30, 40]
    request.state["neumann_warned"] = True
    assert not any(request.watching("neumann") for _ in range(20))
    assert request.watching("cg")  # each check counts on its own
