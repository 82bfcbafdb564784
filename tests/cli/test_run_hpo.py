"""End to end: hpo.mlo through the CLI and the API, and against its Python port."""
from __future__ import annotations

import json

import pytest
import torch

import mlodsl

from tests.support.paths import HPO, HPO_HELDOUT, run_cli

# LANGUAGE.md section 1, verbatim.
SECTION_1 = '''\
# hpo.mlo: per-parameter weight decay for an MLP on the digits data set (bilevel)
from examples.hpo.parts import Net, WeightDecay, digits, weighted_l2, accuracy
import torch.nn.functional as F

let batch = 64
let sizes = [64, 200, 10]

problem classifier {
    module     = Net(sizes)
    optimizer  = SGD(lr=0.01, momentum=0.9)
    data       = digits(split="train")
    batch_size = batch
    loss(x, y) = F.cross_entropy(classifier(x), y) + weighted_l2(classifier, hpo())
}

problem hpo depends classifier via darts() {
    module     = WeightDecay(like=classifier, init=5e-4)
    optimizer  = Adam(lr=1e-5)
    data       = digits(split="train")
    batch_size = batch
    loss(x, y) = F.cross_entropy(classifier(x), y) + weighted_l2(classifier, hpo())
    after_step = clamp_min(1e-8)
}

engine {
    iterations     = 5000
    validate       = accuracy(classifier, digits(split="test"))
    validate_every = 100
    log_every      = 10
    seed           = 0
}
'''


@pytest.mark.slow
def test_cli_run_writes_the_run_folder(capsys, tmp_path):
    out = tmp_path / "run"
    status, stdout, stderr = run_cli(["run", HPO, "--iterations", 3, "--out", out,
                                      "--set", "classifier.batch_size=32"], capsys)
    assert status == 0, stderr
    assert "final validation (iteration 3): acc=" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "validation" and records[-1]["iteration"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3
    assert summary["parameters"] == {"classifier": 14800, "hpo": 14800}
    assert 0 <= summary["final_validation"]["acc"] <= 100
    assert list((out / "checkpoints").glob("ckpt-*.pt"))


def _port(variant: str, steps: int):
    from examples.hpo import hpo_python
    from examples.hpo.parts import digits
    data = tuple(digits(s) for s in ("train", "val", "test"))
    engine = hpo_python.build(variant, data, [64, 200, 10], steps, seed=0, valid_step=0)
    engine.history.console = False
    engine.run()
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("program, variant", [(HPO, "seed"), (HPO_HELDOUT, "heldout")])
def test_mlo_and_python_port_take_the_same_steps(program, variant):
    steps = 4
    port = _port(variant, steps)
    plan = mlodsl.compile(str(program), overrides={"engine.iterations": steps})
    plan.run(console=False)
    assert plan.engine.global_step == steps
    for name in ("classifier", "hpo"):
        ours = list(plan.problems[name].module.parameters())
        theirs = list(port.problems[name].module.parameters())
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), (name, (a - b).abs().max())
        assert plan.problems[name].count == port.problems[name].count


@pytest.mark.slow
def test_language_section_1_program_runs():
    plan = mlodsl.compile(SECTION_1, overrides={"engine.iterations": 2})
    history = plan.run(console=False)
    assert plan.engine.global_step == 2
    assert history[-1]["kind"] == "validation" and "acc" in history[-1]
    assert plan.losses["hpo"].reads == ["classifier", "hpo"]


def test_resume_continues_exactly(capsys, tmp_path):
    from tests.support.paths import IMPORTS
    program = IMPORTS / "bilevel.mlo"
    status, straight, err = run_cli(["run", program, "--out", tmp_path / "a", "--quiet",
                                     "--iterations", 6], capsys)
    assert status == 0, err
    assert run_cli(["run", program, "--out", tmp_path / "b", "--quiet"], capsys)[0] == 0
    status, resumed, err = run_cli(["run", program, "--resume", tmp_path / "b", "--quiet",
                                    "--iterations", 6], capsys)
    assert status == 0, err
    assert straight.splitlines()[-1] == resumed.splitlines()[-1]  # same final metrics
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3, 4, 5, 6]
    status, _, err = run_cli(["run", program, "--resume", tmp_path / "nothing"], capsys)
    assert status == 2 and "no checkpoint in" in err
