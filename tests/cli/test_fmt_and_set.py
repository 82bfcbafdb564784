"""`mlodsl fmt` never leaves a partial file; `--set` values are data, never code."""
import os

import pytest

import mlodsl
from mlodsl import MLOError
from tests.support.runs import cli, file_size_limit, mlodsl as run_mlodsl

UGLY = ("from torch import nn\n"
        "problem p{module=nn.Linear(2,1);optimizer=SGD(lr=0.1);data=[1];"
        "loss(x)=p(x).sum()}\n"
        "engine{iterations=1}\n" + "# padding comment line to make the file longer\n" * 40)


def test_fmt_on_a_full_disk_leaves_the_original_whole(tmp_path):
    src = tmp_path / "ugly.mlo"
    src.write_text(UGLY)
    os.chmod(src, 0o640)
    r = run_mlodsl("fmt", src, preexec_fn=file_size_limit(len(UGLY) // 3))
    assert r.returncode == 2
    assert f"cannot write '{src}': File too large (the file is unchanged)" in r.stderr
    assert src.read_text() == UGLY
    assert os.listdir(tmp_path) == ["ugly.mlo"]  # no temporary file left
    r = run_mlodsl("fmt", src)
    assert r.returncode == 0 and src.read_text() != UGLY
    assert (src.stat().st_mode & 0o777) == 0o640  # the file keeps its permissions
    assert run_mlodsl("fmt", "--check", src).returncode == 0


PROGRAM = """\
import torch.nn.functional as F
from torch import nn
from tests.support.run_parts import data

let n = 4
problem p {
    module     = nn.Linear(n, 1)
    optimizer  = SGD(lr=0.1)
    data       = data(n)
    batch_size = 4
    loss(x, y) = F.mse_loss(p(x), y)
}
engine { iterations = 1 }
"""


@pytest.mark.parametrize("setting, message", [
    ('engine.seed=F.torch.os.makedirs("{made}")', "may not read attributes ('.torch')"),
    ('engine.seed=nn.modules.module.sys.exit(3)', "may not read attributes ('.modules')"),
    ("engine.seed=F.__dict__", "may not read attributes ('.__dict__')"),
    ("engine.seed=F[0]", "may not take subscripts"),
    ("engine.iterations=10**10**10", "integer too large for an override"),
    ("engine.iterations=2**100000", "integer too large for an override"),
    ("engine.iterations=len('x' * 10**12)", "value too long for an override"),
    ("engine.iterations=(1,) * 10**9", "value too long for an override"),
    ("engine.iterations=1e308 * 10", "overflows"),
    ("p.optimizer=SGD(lr=data(4))", "a nested call is not allowed"),
    ("p.optimizer.lr=n * 2", "arithmetic in an override works on literals only"),
    ("p.optimizer=SGD(lr=-n)", "arithmetic in an override works on literals only"),
    ("p.optimizer=SGD(lr=F.relu)", "may not read attributes ('.relu')"),
    ("p.optimizer=SGD(lr=[F][0])", "may not take subscripts"),
    ("engine.seed=open", "unknown name 'open'"),
    ("engine.seed=exec('1')", "unknown name 'exec'"),
])
def test_hostile_overrides_are_refused_as_diagnostics(tmp_path, capsys, setting, message):
    prog = tmp_path / "prog.mlo"
    prog.write_text(PROGRAM)
    made = tmp_path / "made"
    setting = setting.format(made=made)
    status, out, err = cli(capsys, "compile", prog, "--set", setting)
    assert status == 2, err
    target = setting.split("=", 1)[0]
    assert err.startswith(f"--set {target}:1:") and message in err.splitlines()[0], err
    assert "Traceback" not in err and not made.exists()
    with pytest.raises(MLOError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*").replace(".", r"\.")):
        mlodsl.compile(str(prog), overrides=[setting])


@pytest.mark.parametrize("setting, check", [
    ("n=5", lambda plan: plan.problems["p"].module.weight.shape == (1, 5)),
    ("p.optimizer=Adam(lr=1e-3, betas=(0.5, 0.6))",
     lambda plan: plan.problems["p"].optimizer.param_groups[0]["betas"] == (0.5, 0.6)),
    ("p.optimizer.lr=-1e-3 * -2", lambda plan: plan.problems["p"].optimizer.param_groups[0]["lr"]
     == pytest.approx(2e-3)),
    ("engine.iterations=2**3", lambda plan: plan.engine_settings["train_iters"] == 8),
    ("p.data=data(8, size=8)", lambda plan: len(plan.problems["p"].train_data_loader.dataset) == 8),
    ("engine.hypergrad=darts(alpha=0.1)", lambda plan: True),
    ("p.optimizer.lr=n", lambda plan: plan.problems["p"].optimizer.param_groups[0]["lr"] == 4),
    ("p.data=data(n, size=12)", lambda plan: len(plan.problems["p"].train_data_loader.dataset)
     == 12),
    ('engine.early_stop=dict(metric="loss", mode="min", patience=2)', None),
])
def test_data_overrides_still_work(tmp_path, setting, check):
    prog = tmp_path / "prog.mlo"
    prog.write_text(PROGRAM.replace("engine { iterations = 1 }",
                                    "engine { iterations = 1; validate = dict(loss=1.0) }"))
    plan = mlodsl.compile(str(prog), overrides=[setting])
    assert check is None or check(plan)
