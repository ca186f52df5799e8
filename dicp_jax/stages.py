"""The one place that turns a preset plus overrides into each stage's typed config.

The CLI commands (``--set key=value``) and experiment files (per-stage override dicts) both
build their configs here, so a key valid in one is valid in the other, every error names
the valid keys, and a combination the env cannot support is refused before any work
starts, wherever the config came from. Everything here is pure: no files, no devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from dicp_jax import config as cfglib
from dicp_jax.config import ConfigError


class _Planners:
    """The registered planner names, read when asked (a planner registered later, e.g. by a
    test, is valid in experiment rows too) without importing JAX with this module."""

    def names(self) -> list[str]:
        from dicp_jax import planning

        return planning.names()

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())


PLANNERS = _Planners()


def check_env_name(env_name: str) -> None:
    """Refuse an unknown env, listing the registered ones."""
    import dicp_envs

    if env_name not in dicp_envs.names():
        raise ConfigError(f"unknown env {env_name!r}; valid: {', '.join(dicp_envs.names())}")


def ppo_config(env_name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The env's paper source settings (its family's source, PPO on the grids) with
    ``overrides`` (fields of that source's config) applied."""
    import dicp_envs
    from dicp_jax import sources

    check_env_name(env_name)
    source = sources.get(dicp_envs.family(env_name).source)
    return cfglib.replace(source.paper_config(env_name), **dict(overrides or {}))


class TrainStage(NamedTuple):
    train: Any  # TrainConfig
    model: Any  # ModelConfig
    codec: Any  # the env's codec options (``dicp_jax.codecs``)


def split_train_model(env_name: str, overrides: Mapping[str, Any]) -> dict[str, dict]:
    """Route merged ``--set`` overrides to the train, model or codec config (their field
    names do not overlap); an unknown key is refused with every list of valid keys."""
    import dicp_envs
    from dicp_jax import codecs
    from dicp_jax.model import ModelConfig
    from dicp_jax.train import TrainConfig

    check_env_name(env_name)
    types = {"train": TrainConfig, "model": ModelConfig,
             "codec": codecs.config_type(dicp_envs.make(env_name)[0])}
    keys = {section: set(cfglib.field_names(t)) for section, t in types.items()}
    unknown = sorted(set(overrides) - set().union(*keys.values()))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; " + "; ".join(
            f"valid {section} keys: {', '.join(sorted(k))}" for section, k in keys.items()))
    return {section: {k: v for k, v in overrides.items() if k in k_set}
            for section, k_set in keys.items()}


def train_configs(env_name: str, preset: str, train: Mapping[str, Any] | None = None,
                  model: Mapping[str, Any] | None = None,
                  codec: Mapping[str, Any] | None = None) -> TrainStage:
    """(TrainConfig, ModelConfig, codec options) of a named preset with overrides, checked
    against the env.

    Why the env check here: a counterfactual loss needs an env whose observation is its
    state; found only when training starts, the refusal came after the run was recorded."""
    import dicp_envs
    from dicp_jax import codecs
    from dicp_jax.train import preset_configs

    check_env_name(env_name)
    train_cfg, model_cfg = preset_configs(env_name, preset)
    model_cfg = cfglib.replace(model_cfg, **dict(model or {}))
    train_cfg = cfglib.replace(train_cfg, **dict(train or {}))
    codec_type = codecs.config_type(dicp_envs.make(env_name)[0])
    codec_cfg = cfglib.replace(codec_type(), **dict(codec or {}))
    if train_cfg.counterfactual > 0 and not dicp_envs.make(env_name)[0].observation_is_state:
        raise ConfigError(f"counterfactual={train_cfg.counterfactual} needs an env whose "
                          f"observation is its state; {env_name} has a hidden part (e.g. a "
                          "key): set counterfactual=0")
    return TrainStage(train_cfg, model_cfg, codec_cfg)


def eval_keys(planner: str | None = None) -> tuple[list[str], list[str]]:
    """(EvalConfig keys, planner config keys) that an override may set: the keys of
    ``planner``'s own config, or of every registered planner's. ``plan`` is that nested
    config itself: its fields are set by name instead. ``greedy`` may be in both and then
    sets both (the policy's argmax and, in beam search, actions ranked by probability), as
    ``dicp eval --greedy`` does."""
    from dicp_jax import planning
    from dicp_jax.evaluate import EvalConfig

    names = planning.names() if planner is None else [planner]
    plan = sorted({k for n in names for k in cfglib.field_names(planning.get(n).config)})
    return [k for k in cfglib.field_names(EvalConfig) if k != "plan"], plan


def eval_config(env_name: str, overrides: Mapping[str, Any] | None = None,
                planner: str | None = None) -> Any:
    """EvalConfig (with its planner's config) from overrides of either's fields;
    ``planner``, if given, wins over an override. A key of another planner's config is
    refused (it would do nothing), as is a combination the env cannot support."""
    import dicp_envs
    from dicp_jax import planning
    from dicp_jax.evaluate import EvalConfig, check_env

    check_env_name(env_name)
    overrides = dict(overrides or {})
    name = overrides.pop("planner", EvalConfig.planner)
    name = str(name if planner is None else planner)
    entry = planning.get(name)
    eval_names, plan_names = eval_keys(name)
    _, any_plan = eval_keys()
    unknown = sorted(set(overrides) - set(eval_names) - set(any_plan))
    if unknown:
        hint = " (set the planner's fields by name, e.g. beam_size=5)" if "plan" in unknown else ""
        raise ConfigError(f"unknown key(s) {unknown}{hint}; valid eval keys: "
                          f"{', '.join(eval_names)}; valid plan keys: "
                          f"{', '.join(plan_names) or 'none'} (planner {name!r})")
    foreign = sorted(set(overrides) - set(eval_names) - set(plan_names))
    if foreign:
        owners = [n for n in planning.names()
                  if set(foreign) & set(cfglib.field_names(planning.get(n).config))]
        raise ConfigError(f"key(s) {foreign} configure planner(s) {', '.join(owners)}, not "
                          f"{name!r} (its keys: {', '.join(plan_names) or 'none'}): drop them "
                          "or choose that planner")
    plan = cfglib.replace(entry.config(), **{k: v for k, v in overrides.items()
                                             if k in plan_names})
    rest = {k: v for k, v in overrides.items() if k in eval_names}
    cfg = cfglib.replace(EvalConfig(planner=name, plan=plan), **rest)
    check_env(dicp_envs.make(env_name)[0], cfg)
    return cfg


def eval_warnings(cfg: Any, horizon: int, n_transit: int) -> list[str]:
    """Settings under which the meta-test's planning mode does nothing, one line each."""
    if cfg.planner == "policy":  # the policy never waits for plan_start
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
