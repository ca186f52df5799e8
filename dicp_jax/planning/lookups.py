"""In-context look-ups: opt-in scorers for a search, BEYOND THE PAPER.

The paper's planner values an imagined plan by the rewards its world model predicts
(``base.PREDICTED_REWARD``). The two look-ups here read the real context window exactly
instead, where the window holds the answer; both are off unless a meta-test asks for them
(``EvalConfig.before_reward="explore"``, ``EvalConfig.reward_memory``):

- **novelty exploration** (``explore``): while no reward is in the window, a plan is worth
  the novelty of its imagined arrivals, ``1 / (1 + visits)`` summed, with visits counted in
  the window and along the plan (in-context count-based exploration). With rewards unseen,
  the predicted rewards carry no evidence, so planning towards them chases false alarms.
- **reward memory** (``reward_memory``): an imagined arrival at an observation the window
  has already arrived at gets the reward observed there instead of the predicted one, so a
  false alarm on a visited cell cannot draw the agent back. Valid only where a reward is a
  function of the arrival observation (envs declaring ``reward_of_arrival``).

The rollout keeps the window's arrivals in a ``Context`` ring and builds the scorer each
real step (``make_scorer``); any planner that reads ``Situation.scorer`` applies them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dicp_jax.config import ConfigError
from dicp_jax.planning.base import PREDICTED_REWARD, Scorer


@dataclasses.dataclass(frozen=True)
class Lookups:
    """Which look-ups are on (both off: the paper's planner)."""

    explore: bool = False  # novelty instead of predicted reward while no reward is in context
    reward_memory: bool = False  # imagined arrivals the context has seen take its reward

    @property
    def on(self) -> bool:
        return self.explore or self.reward_memory


def check_lookups(env: Any, cfg: Lookups) -> None:
    """Refuse a look-up whose assumption the env does not satisfy."""
    if cfg.reward_memory and not env.reward_of_arrival:
        raise ConfigError(
            f"reward_memory assumes a reward is a function of the observation it arrives at, "
            f"which {type(env).__name__} does not satisfy (e.g. a hidden key); turn it off")


class Context(NamedTuple):
    """The observations the real context window arrived at, as a ring of ``S`` slots."""

    obs: jax.Array  # [S, obs_dim], the codec's dtype: -1 in empty slots
    reward: jax.Array  # float32 [S]: reward of the arrival; nan after a reset or if empty


def empty_context(size: int, obs_dim: int, dtype: Any = jnp.int32) -> Context:
    return Context(jnp.full((size, obs_dim), -1, dtype), jnp.full((size,), jnp.nan))


def remember(ctx: Context, slot: jax.Array, obs: jax.Array, reward: jax.Array,
             first: jax.Array) -> Context:
    """Store the current state token's observation and the reward of arriving at it."""
    return Context(ctx.obs.at[slot].set(obs.astype(ctx.obs.dtype)),
                   ctx.reward.at[slot].set(jnp.where(first, jnp.nan, reward)))


def matches(obs: jax.Array, known: jax.Array) -> jax.Array:
    """``obs [N, D]`` equals row s of ``known [S, D]`` -> bool ``[N, S]``."""
    return jnp.all(obs[:, None, :] == known[None], axis=-1)


def arrivals(ctx: Context, obs: jax.Array) -> jax.Array:
    """Context slots that arrived at ``obs [N, D]`` (a reset is no arrival) -> bool [N, S].

    The start cell counts as unvisited until a step ends there: its reward is unknown."""
    return matches(obs, ctx.obs) & ~jnp.isnan(ctx.reward)[None]


def recall(ctx: Context, obs: jax.Array, predicted: jax.Array) -> jax.Array:
    """The observed reward of arriving at ``obs [N, D]`` where the context has it."""
    hit = arrivals(ctx, obs)
    return jnp.where(hit.any(-1), ctx.reward[jnp.argmax(hit, -1)], predicted)


class Novelty(NamedTuple):
    """A candidate plan's exploration state."""

    novelty: jax.Array  # float32 [N]: sum of 1 / (1 + visits) over its imagined arrivals
    path: jax.Array  # [N, depth, obs_dim]: its imagined observations (-1: none yet)


def make_scorer(cfg: Lookups, ctx: Context, rewarded: jax.Array) -> Scorer:
    """The scorer of one real step: the paper's, with the look-ups ``cfg`` turns on.

    ``rewarded`` (bool []) says a rewarded transition is in the window; exploration stops
    from then on."""
    if not cfg.on:
        return PREDICTED_REWARD
    reward = ((lambda obs, predicted: recall(ctx, obs, predicted)) if cfg.reward_memory
              else PREDICTED_REWARD.reward)
    if not cfg.explore:
        return PREDICTED_REWARD._replace(reward=reward)
    explore = ~rewarded

    def init(n: int, depth: int) -> Novelty:
        return Novelty(jnp.zeros((n,)), jnp.full((n, depth, ctx.obs.shape[-1]), -1,
                                                 ctx.obs.dtype))

    def score(parents: Novelty, obs: jax.Array, value: jax.Array,
              d: jax.Array) -> tuple[jax.Array, Novelty]:
        chex.assert_equal_shape_prefix((parents.path, obs, value), 1)
        visits = arrivals(ctx, obs).sum(-1) + jax.vmap(
            lambda o, path: matches(o[None], path).sum())(obs, parents.path)
        novelty = parents.novelty + 1.0 / (1.0 + visits)
        children = Novelty(novelty, parents.path.at[:, d].set(obs.astype(ctx.obs.dtype)))
        return jnp.where(explore, novelty, value), children

    return Scorer(init, reward, score)


__all__ = ["Context", "Lookups", "Novelty", "arrivals", "check_lookups", "empty_context",
           "make_scorer", "matches", "recall", "remember"]
