"""One rule, one message: a setting is validated by its rule in mlodsl.settings wherever the
value is caught (the checker for literals, lowering for computed values, Config/EngineConfig
for Python arguments)."""
from __future__ import annotations

import dataclasses

import pytest

import mlodsl
from mlodsl import Config, EngineConfig, MLOError
from mlodsl.settings import CONFIG_SETTINGS, ENGINE_CONFIG_SETTINGS

PROGRAM = """\
from torch.nn import Linear
from torch.optim import SGD
problem p {{
    module = Linear(2, 1)
    optimizer = SGD(lr=0.1)
    data = [(1.0, 2.0)]
    loss(x, y) = p.weight.sum() * x
}}
engine {{
    iterations = 2
    validate = 1.0
    {field}
}}
"""


def _message(field: str) -> str:
    with pytest.raises(MLOError) as err:
        mlodsl.compile(PROGRAM.format(field=field))
    return err.value.diagnostics[0].message


@pytest.mark.parametrize("literal, computed, message", [
    ('precision = "fp64"', 'precision = "fp" + "64"',
     "'precision' of the engine must be one of \"fp32\", \"bf16\", \"fp16\", got 'fp64'"),
    ("checkpoint_keep = -1", "checkpoint_keep = 1 - 2",
     "'checkpoint_keep' of the engine must be an integer >= 0, got -1"),
    ("timeout = 0", "timeout = 1 - 1", "'timeout' of the engine must be a number > 0, got 0"),
    ("compile = 1", "compile = 2 - 1", "'compile' of the engine must be True or False, got 1"),
])
def test_checker_and_lowering_say_the_same(literal, computed, message):
    assert _message(literal) == message  # caught by the checker (a literal)
    assert _message(computed) == message  # caught by lowering (a computed value)


def test_config_uses_the_same_rules():
    with pytest.raises(MLOError, match='precision=...\\) must be one of "fp32", "bf16", "fp16", '
                                      "got 'fp64'"):
        Config(precision="fp64")
    with pytest.raises(MLOError, match="must be a positive integer, got 0"):
        Config(unroll_steps=0)
    with pytest.raises(MLOError, match="must be True or False, got 1"):
        EngineConfig(compile=1)


def test_early_stop_keys_follow_their_rules():
    assert _message("early_stop = dict(patience=0)") == \
        "'early_stop' patience must be a positive integer, got 0"
    assert _message('early_stop = dict(mode="up")') == \
        "'early_stop' mode must be one of \"min\", \"max\", got 'up'"


@pytest.mark.parametrize("cls, table", [(Config, CONFIG_SETTINGS),
                                        (EngineConfig, ENGINE_CONFIG_SETTINGS)])
def test_config_fields_are_the_table(cls, table):
    fields = {f.name: f.default for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    assert fields == {name: s.default for name, s in table.items()}
