"""The shared stage-config builder: one set of valid keys for the CLI and experiment files."""

from __future__ import annotations

import pytest

from dicp_jax import stages
from dicp_jax.config import ConfigError, from_dict, to_dict
from dicp_jax.evaluate import EvalConfig, config_from_dict

pytestmark = pytest.mark.xdist_group("cli")


def test_eval_overrides_reach_the_eval_and_the_plan_config():
    cfg = stages.eval_config("darkroom", {"beam_size": "3", "depth": 4, "episodes": "7",
                                          "reward_memory": "true", "planner": "policy"}, "beam")
    assert (cfg.plan.beam_size, cfg.plan.depth, cfg.reward_memory) == (3, 4, True)
    assert (cfg.episodes, cfg.planner) == (7, "beam")  # the planner argument wins
    greedy = stages.eval_config("darkroom", {"greedy": "yes"})
    assert greedy.greedy and greedy.plan.greedy  # as `dicp eval --greedy`
    eval_names, plan_names = stages.eval_keys()
    assert {"beam_size", "depth"} <= set(plan_names) and "reward_memory" in eval_names
    assert "plan" not in eval_names and "episodes" in eval_names


@pytest.mark.parametrize("overrides, words", [
    ({"plan": 3}, "set the planner's fields by name"),
    ({"beam_siz": 3}, "valid plan keys: beam_size"),
    ({"depth": 0}, "depth must be >= 1"),
    ({"episodes": "x"}, "not a valid int"),
    ({"plan_start": -1}, "plan_start must be >= 0"),
])
def test_bad_eval_overrides_are_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        stages.eval_config("darkroom", overrides)


def test_env_dependent_refusals():
    with pytest.raises(ConfigError, match="reward_memory"):
        stages.eval_config("dark_key_to_door", {"reward_memory": True})
    with pytest.raises(ConfigError, match="look-ups"):  # AD imagines nothing to look up
        stages.eval_config("dark_key_to_door", {"reward_memory": True}, "policy")
    with pytest.raises(ConfigError, match="configure planner"):  # a beam key does nothing
        stages.eval_config("darkroom", {"beam_size": 3}, "policy")
    with pytest.raises(ConfigError, match="counterfactual"):
        stages.train_configs("dark_key_to_door", "cpu", {"counterfactual": 1.0})
    with pytest.raises(ConfigError, match="unknown env 'nope'"):
        stages.ppo_config("nope")
    with pytest.raises(ConfigError, match="valid model keys"):
        stages.split_train_model("darkroom", {"widht": 3})
    # grid-only embedding options belong to the grid codec, routed there by name
    routed = stages.split_train_model("darkroom", {"obs_mix": "true", "width": 8, "steps": 3})
    assert routed == {"train": {"steps": 3}, "model": {"width": 8}, "codec": {"obs_mix": "true"}}
    assert stages.train_configs("darkroom", "cpu", **routed).codec.obs_mix is True


def test_a_nested_config_round_trips_through_json_but_is_not_a_scalar():
    cfg = stages.eval_config("darkroom", {"beam_size": 4})
    assert config_from_dict(to_dict(cfg)) == cfg
    ad = stages.eval_config("darkroom", {"greedy": True}, "policy")
    assert config_from_dict(to_dict(ad)) == ad
    with pytest.raises(ConfigError, match="nested PlanConfig"):
        from_dict(EvalConfig, {"plan": 3})


def test_noop_warnings():
    never = stages.eval_config("darkroom", {"episodes": 2, "plan_start": 40})
    assert "never plans" in stages.eval_warnings(never, 20, 80)[0]
    assert stages.eval_warnings(stages.eval_config("darkroom", {"episodes": 2}), 20, 80)
    assert not stages.eval_warnings(stages.eval_config("darkroom", {"episodes": 5}), 20, 80)
    assert not stages.eval_warnings(stages.eval_config("darkroom", {"episodes": 1}, "policy"),
                                    20, 80)
    train = stages.train_configs("darkroom", "cpu", {"counterfactual": 1.0,
                                                     "dynamics_strength": 0.0}).train
    assert any("counterfactual" in w for w in stages.train_warnings(train))
