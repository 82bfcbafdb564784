"""Config and EngineConfig accept Betty 0.2.1's fields; the upper's type/step choose the method."""

import pytest
import torch

from mlodsl import Config, EngineConfig, MLOError
from mlodsl.runtime.config import ConfigConflictWarning
from mlodsl.runtime.engine import Engine

from tests.support.toy_problems import make_problem

BETTY_CONFIG_FIELDS = {
    "type": "darts", "unroll_steps": 1, "first_order": True, "retain_graph": False,
    "allow_unused": True, "gradient_accumulation": 1, "gradient_clipping": 0.0,
    "precision": "fp32", "initial_dynamic_scale": 4096.0, "scale_factor": 2.0,
    "warmup_steps": 0, "log_step": -1, "log_local_step": False, "darts_alpha": 0.01,
    "darts_multitask": False, "sama_adam_alpha": 1.0, "sama_multitask": False,
    "neumann_iterations": 1, "neumann_alpha": 1.0, "cg_iterations": 1, "cg_alpha": 1.0,
}
BETTY_ENGINE_FIELDS = {
    "train_iters": 50000, "valid_step": 500, "logger_type": "none", "roll_back": False,
    "backend": "nccl", "strategy": "default", "early_stopping": False,
    "early_stopping_mode": "min", "early_stopping_tolerance": 5, "early_stopping_metric": "loss",
}


def test_betty_fields_and_defaults():
    c, e = Config(), EngineConfig()
    for name, default in BETTY_CONFIG_FIELDS.items():
        assert getattr(c, name) == default, name
    for name, default in BETTY_ENGINE_FIELDS.items():
        assert getattr(e, name) == default, name
    assert Config(**BETTY_CONFIG_FIELDS) == c


def test_step_is_an_alias_of_unroll_steps():
    assert Config(step=4).unroll_steps == 4 == Config(step=4).step
    with pytest.raises(MLOError):
        Config(step=2, unroll_steps=3)


def test_unknown_fields_are_errors_with_a_hint():
    with pytest.raises(MLOError) as err:
        Config(darts_alhpa=0.1)
    assert "darts_alpha" in err.value.diagnostics[0].hint
    with pytest.raises(MLOError, match="unknown hypergradient method"):
        Config(type="dart")
    with pytest.raises(MLOError):
        EngineConfig(train_iter=3)


def _edge(upper_cfg, lower_cfg):
    lo = make_problem("lo", config=lower_cfg)
    up = make_problem("up", reads=("lo",), config=upper_cfg)
    e = Engine(EngineConfig(train_iters=1), [up, lo], {"l2u": {lo: [up]}})
    return e.edges[("up", "lo")]


def test_upper_config_chooses_the_method_seed_semantics():
    edge = _edge(Config(type="neumann", step=3, neumann_iterations=5), Config())
    assert (edge.method, edge.every, edge.args["iterations"]) == ("neumann", 3, 5)


def test_lower_config_is_honoured_when_the_upper_is_silent_betty_semantics():
    edge = _edge(Config(), Config(type="cg", unroll_steps=2, cg_alpha=0.5))
    assert (edge.method, edge.every, edge.args["alpha"]) == ("cg", 2, 0.5)


def test_lower_wins_over_upper_with_a_warning_naming_both_betty_semantics():
    with pytest.warns(ConfigConflictWarning, match="'darts' on the upper 'up' and 'cg' on the "
                      "lower 'lo'; using 'cg'"):
        edge = _edge(Config(type="darts", darts_alpha=0.1), Config(type="cg"))
    assert edge.method == "cg"


def test_cuda_on_a_cpu_machine_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MLOError, match="CUDA is not available"):
        make_problem("p").__class__(name="p", device="cuda")
