"""The one place that turns a preset plus overrides into each stage's typed config.

The CLI commands (``--set key=value``) and experiment files (per-stage override dicts) both
build their configs here, so a key valid in one is valid in the other, every error names
the valid keys, and a combination the env cannot support is refused before any work
starts, wherever the config came from. Everything here is pure: no files, no devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dicp_jax import config as cfglib
from dicp_jax.config import ConfigError

PLANNERS = ("policy", "beam")


def check_env_name(env_name: str) -> None:
    """Refuse an unknown env, listing the registered ones."""
    import dicp_envs

    if env_name not in dicp_envs.names():
        raise ConfigError(f"unknown env {env_name!r}; valid: {', '.join(dicp_envs.names())}")


def ppo_config(env_name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The env's paper PPO settings with ``overrides`` (``PPOConfig`` fields) applied."""
    from dicp_jax.ppo import paper_ppo_config

    check_env_name(env_name)
    return cfglib.replace(paper_ppo_config(env_name), **dict(overrides or {}))


def split_train_model(overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """Route merged ``--set`` overrides to the train or the model config (their field names
    do not overlap); an unknown key is refused with both lists of valid keys."""
    from dicp_jax.model import ModelConfig
    from dicp_jax.train import TrainConfig

    train_keys = set(cfglib.field_names(TrainConfig))
    model_keys = set(cfglib.field_names(ModelConfig))
    unknown = sorted(set(overrides) - train_keys - model_keys)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown}; valid train keys: {', '.join(sorted(train_keys))}; "
            f"valid model keys: {', '.join(sorted(model_keys))}")
    return ({k: v for k, v in overrides.items() if k in train_keys},
            {k: v for k, v in overrides.items() if k in model_keys})


def train_configs(env_name: str, preset: str, train: Mapping[str, Any] | None = None,
                  model: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(TrainConfig, ModelConfig) of a named preset with overrides, checked against the env.

    Why the env check here: a counterfactual loss needs an env whose observation is its
    state; found only when training starts, the refusal came after the run was recorded."""
    import dicp_envs
    from dicp_jax.data import observation_is_state
    from dicp_jax.train import preset_configs

    check_env_name(env_name)
    train_cfg, model_cfg = preset_configs(env_name, preset)
    model_cfg = cfglib.replace(model_cfg, **dict(model or {}))
    train_cfg = cfglib.replace(train_cfg, **dict(train or {}))
    if train_cfg.counterfactual > 0 and not observation_is_state(dicp_envs.make(env_name)[0]):
        raise ConfigError(f"counterfactual={train_cfg.counterfactual} needs an env whose "
                          f"observation is its state; {env_name} has a hidden part (e.g. a "
                          "key): set counterfactual=0")
    return train_cfg, model_cfg


def eval_keys() -> tuple[list[str], list[str]]:
    """(EvalConfig keys, PlanConfig keys) that an override may set. ``plan`` is the nested
    PlanConfig itself: its fields are set by name instead. ``greedy`` is in both and sets
    both (argmax actions in policy mode, actions ranked by probability in the planner), as
    ``dicp eval --greedy`` does."""
    from dicp_jax.evaluate import EvalConfig
    from dicp_jax.planner import PlanConfig

    plan = cfglib.field_names(PlanConfig)
    return [k for k in cfglib.field_names(EvalConfig) if k != "plan" and k not in plan], plan


def eval_config(env_name: str, overrides: Mapping[str, Any] | None = None,
                planner: str | None = None) -> Any:
    """EvalConfig (with its PlanConfig) from overrides of either's fields; ``planner``, if
    given, wins over an override. Refused if the env cannot support the combination."""
    import dicp_envs
    from dicp_jax.evaluate import EvalConfig, check_env
    from dicp_jax.planner import PlanConfig

    check_env_name(env_name)
    overrides = dict(overrides or {})
    eval_names, plan_names = eval_keys()
    unknown = sorted(set(overrides) - set(eval_names) - set(plan_names))
    if unknown:
        hint = " (set the planner's fields by name, e.g. beam_size=5)" if "plan" in unknown else ""
        raise ConfigError(f"unknown key(s) {unknown}{hint}; valid eval keys: "
                          f"{', '.join(eval_names)}; valid plan keys: {', '.join(plan_names)}")
    plan = cfglib.replace(PlanConfig(), **{k: v for k, v in overrides.items()
                                          if k in plan_names})
    rest = {k: v for k, v in overrides.items() if k not in plan_names or k == "greedy"}
    if planner is not None:
        rest["planner"] = planner
    cfg = cfglib.replace(EvalConfig(), **rest)
    cfg = dataclasses.replace(cfg, plan=plan)
    cfg.validate()
    check_env(dicp_envs.make(env_name)[0], cfg)
    return cfg


def eval_warnings(cfg: Any, horizon: int, n_transit: int) -> list[str]:
    """Settings under which the meta-test's planning mode does nothing, one line each."""
    if cfg.planner != "beam":
        return []
    start = n_transit if cfg.plan_start is None else cfg.plan_start
    steps = cfg.episodes * horizon
    if start >= steps:
        which = "n_transit" if cfg.plan_start is None else "plan_start"
        return [f"planning starts after {start} steps ({which}) but the meta-test has only "
                f"{steps} ({cfg.episodes} episodes x {horizon}): the planner never plans and "
                "DICP equals AD; lower plan_start or raise episodes"]
    return []


def train_warnings(cfg: Any) -> list[str]:
    """Train settings that are accepted but change nothing, one line each."""
    out = []
    if cfg.counterfactual > 0 and cfg.dynamics_strength == 0:
        out.append(f"counterfactual={cfg.counterfactual} has no effect with "
                   "dynamics_strength=0 (its loss is weighted by it)")
    if cfg.dynamics_from_dropped and cfg.min_source_return == 0:
        out.append("dynamics_from_dropped has no effect with min_source_return=0 "
                   "(no train task is dropped)")
    return out


__all__ = ["PLANNERS", "check_env_name", "eval_config", "eval_keys", "eval_warnings",
           "ppo_config", "split_train_model", "train_configs", "train_warnings"]
