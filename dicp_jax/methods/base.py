"""Imitation methods: what a method owns, and the registry that names them.

A method is a module with

- ``NAME``: its registry name (recorded with the run, via ``TrainConfig.method``);
- ``make_model(model_cfg, codec)``: the Flax model it trains (sharing the backbone code),
  ``init_params(model, key)`` its parameters, ``check_config(train_cfg, model_cfg)`` refuses
  training options its layout cannot take (a ``ConfigError``);
- ``prepare_data(data, env, tasks) -> TrainData``: its own additions to a split's histories,
  once on the host (DPT's oracle labels, IDT's episode order); ``tasks`` are the histories'
  batched env params (None if unknown);
- ``window(data, task, stream, offset, n) -> (tokens, Targets)``: its batch layout, one
  training sequence of ``n`` transitions cut from the on-device histories (``data``);
- ``loss(model, params, tokens, targets, key, lam, deterministic, weight, cf_weight)``:
  its per-batch loss and metrics (imitation + ``lam`` x dynamics);
- ``LAYOUT``: ``"ad"`` for a method on AD's interleaved token layout (validated by AD's
  ``dicp_jax.validate.Validator``, with its reward-recall metrics), else its own name, and
  then ``stats(model, params, tokens, targets) -> {metric: (hits, counts)}``: held-out
  validation counts by position (``validate.MethodValidator`` sums them over windows);
- ``make_agent(model, params, codec, n_transit) -> Agent``: how it acts at meta-test,
  including the world model its planners imagine with;

so that training, validation, the meta-test and checkpoints are method-agnostic. A new
method is a new module plus a registry line.

An ``Agent`` is three pure functions over a fixed-size state (the rollout scans them, one
task per vmapped lane, so buffers have static shapes and no Python runs per step):

    init(task: TaskInfo)            -> state
    query(state, now: Step)         -> (state, action_logits, real_cache)
    commit(state, now: Step, action) -> state

``query`` takes in the real step (the current observation and the transition that led to
it) and returns the policy head there plus what a planner searches from (``real_cache``,
read only through the agent's ``wm``); ``commit`` records the action actually taken.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import jax

from dicp_jax.config import Registry
from dicp_jax.planning.world_model import WorldModel

REQUIRED = ("NAME", "LAYOUT", "make_model", "init_params", "check_config", "prepare_data",
            "window", "loss", "make_agent")
METHODS = Registry("method")
get, names, unregister = METHODS.get, METHODS.names, METHODS.unregister


class Transition(NamedTuple):
    """The real transition that led to the current step (meaningless at step 0)."""

    obs: jax.Array  # [obs_dim]
    action: jax.Array  # [] or [action_dim]
    reward: jax.Array  # float32 []
    next_obs: jax.Array  # [obs_dim]: the true s' (the terminal observation at an episode end)
    done: jax.Array  # bool []: the episode ended with it


class Step(NamedTuple):
    """What one real step of one task offers an agent."""

    obs: jax.Array  # [obs_dim]: the current observation (a reset one at an episode start)
    prev_reward: jax.Array  # float32 []: reward of the previous step (0 at step 0)
    first: jax.Array  # bool []: ``obs`` starts an episode
    step: jax.Array  # int32 []: absolute step of the meta-test (0, 1, ...)
    episode_step: jax.Array  # int32 []: step within the episode (0 at ``first``)
    last: Transition  # the transition that led here (valid iff step > 0)


class TaskInfo(NamedTuple):
    """Per-task facts an agent may condition on (one vmapped lane)."""

    target_return: jax.Array  # float32 []: return to ask for (the family's oracle if any)
    # The task's own randomness for an agent that samples inside ``query`` (IDT's decisions),
    # independent of the rollout's action and env keys; None where a caller gives none.
    key: jax.Array | None = None


class Agent(NamedTuple):
    wm: WorldModel  # what planners imagine with (its ``decode`` reads ``real_cache``)
    init: Callable[[TaskInfo], Any]
    query: Callable[[Any, Step], tuple[Any, jax.Array, Any]]
    commit: Callable[[Any, Step, jax.Array], Any]


def require_one_window(name: str, train_cfg: Any) -> None:
    """Refuse AD's multi-window training options for a method whose sequence is one window
    of its own layout (DPT, IDT)."""
    from dicp_jax.config import ConfigError

    bad = [k for k, on in (("seq_windows", train_cfg.seq_windows != 1),
                           ("true_context", train_cfg.true_context),
                           ("counterfactual", train_cfg.counterfactual > 0)) if on]
    if bad:
        raise ConfigError(f"method {name!r} trains one window per sequence: set "
                          f"seq_windows=1, true_context=false, counterfactual=0 "
                          f"(got {', '.join(bad)})")


def register(method: ModuleType) -> ModuleType:
    missing = [a for a in REQUIRED if not hasattr(method, a)]
    if getattr(method, "LAYOUT", "ad") != "ad" and not hasattr(method, "stats"):
        missing.append("stats")
    if missing:
        raise TypeError(f"method {getattr(method, 'NAME', method)} lacks {missing}")
    return METHODS.register(method.NAME, method)


__all__ = ["Agent", "Step", "TaskInfo", "Transition", "get", "names", "register", "unregister"]
