"""`mlodsl compile` says, per problem and edge, whether the compiled iteration holds it."""
import json
import re

from mlodsl.cli import main
from tests.support.compiled_programs import mlo_source

NS = "from tests.support.compiled_programs import Net, Decay, reg_loss, clamp_decay, Loader\n"


def _program(tmp_path, **kwargs):
    src = NS + mlo_source(**kwargs).replace("module     = net", "module     = Net()") \
        .replace("module     = decay", "module     = Decay()") \
        .replace("data       = cdata", "data       = Loader(1)") \
        .replace("data       = hdata", "data       = Loader(2)")
    path = tmp_path / "p.mlo"
    path.write_text(src)
    return str(path)


def test_report_lists_compiled_and_eager_pieces(tmp_path, capsys):
    path = _program(tmp_path, method="reinforce", compile=True, lower_opt="Adamax(lr=0.1)")
    assert main(["compile", path]) == 0
    out = capsys.readouterr().out
    section = out[out.index("compiled iteration (compile = True):"):]
    assert "problem hpo: compiled" in section
    assert re.search(r"problem classifier: eager \(optimizer Adamax has no functional update "
                     r"rule.*\) \[\S+p\.mlo:\d+:\d+\]", section), section
    assert re.search(r"edge hpo -> classifier: eager \(reinforce .*\) \[\S+p\.mlo:\d+:\d+\]",
                     section), section
    assert main(["compile", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    verdicts = {v["piece"]: v for v in data["compiled_iteration"]}
    assert verdicts["problem hpo"]["compiled"] is True
    assert verdicts["edge hpo -> classifier"]["compiled"] is False


def test_report_absent_without_compile(tmp_path, capsys):
    path = _program(tmp_path, method="darts", compile=False)
    assert main(["compile", path]) == 0
    assert "compiled iteration" not in capsys.readouterr().out
