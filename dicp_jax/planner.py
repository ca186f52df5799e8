"""Beam search with the in-context world model (DICP, discrete actions).

At a real step the context (real cache) is encoded once. Each beam carries only its own
imagined tokens in a small cache of ``2 * depth`` slots that is attended *jointly* with the
shared real cache, so an imagined step costs its new tokens only. The window rule in the
model (a key is visible iff its step is within ``n_transit`` of the query's) drops the
oldest real transitions as imagined ones are appended, so every imagined query sees a
context of the same length as in training.

    depth 0 : root actions in policy order -> predict (r, o') -> keep best K (stable sort)
    depth d : beam k: state token (o'_k, r_k) -> policy order of actions -> predict (r, o')
              candidates (k, a) in (beam rank, policy rank) order -> keep best K by score
    act     : first action of the best beam; replan at the next real step

The stable sort is the tie rule: when the world model expects no reward anywhere, every
score ties and the plan's first action is the policy's top action (plain AD behaviour).

Two additions beyond the paper read the real context window exactly (``Context``):

- ``explore`` scores a beam by the novelty of its imagined arrivals, ``1 / (1 + visits)``
  with visits counted in the window and along the beam (in-context count-based
  exploration; the meta-test uses it while no reward is in context);
- ``reward_memory`` gives an imagined arrival at an observation the window has already
  arrived at the reward observed there instead of the predicted one, so a false alarm on a
  visited cell cannot draw the agent back (valid where a reward is a function of the
  arrival observation: Darkroom, Darkroom-Permuted).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dicp_jax.model import Heads, Tokens, action_token
from dicp_jax.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    beam_size: int = 10
    depth: int = 8  # imagined steps at most (paper: grid - 1 Darkroom, 2 (grid - 1) others)
    greedy: bool = False  # rank actions by a sample w/o replacement (paper) or by probability
    leaf_value: bool = False  # add predicted return-to-go beyond the last imagined reward
    reward_estimate: Literal["argmax", "expected"] = "argmax"
    reward_memory: bool = False  # imagined arrivals the context has seen take its reward

    def validate(self) -> None:
        from dicp_jax.config import ConfigError

        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if self.reward_estimate not in ("argmax", "expected"):
            raise ConfigError("reward_estimate must be 'argmax' or 'expected', "
                              f"got {self.reward_estimate!r}")


def state_token(obs: jax.Array, prev_reward: jax.Array, first: jax.Array,
                step: jax.Array) -> Tokens:
    """One state token ``[1]``: observation, previous reward, episode-start flag."""
    return Tokens(
        kind=jnp.zeros((1,), jnp.int32),
        obs=obs.astype(jnp.int32)[None],
        prev_reward=jnp.asarray(prev_reward, jnp.float32)[None],
        first=jnp.asarray(first, bool)[None],
        action=jnp.zeros((1,), jnp.int32),
        step=jnp.asarray(step, jnp.int32)[None],
    )


def rank_actions(logits: jax.Array, key: jax.Array, greedy: bool) -> jax.Array:
    """Actions best-first: by probability, or a sample without replacement (Gumbel top-k)."""
    if not greedy:
        logits = jax.nn.log_softmax(logits) + jax.random.gumbel(key, logits.shape)
    return jnp.argsort(-logits, stable=True).astype(jnp.int32)


def predict(codec: Any, heads: Heads, cfg: PlanConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(reward, next observation, return-to-go) of one action token's heads ``[1, ...]``."""
    if cfg.reward_estimate == "expected":
        values = jnp.asarray(codec.reward_values, jnp.float32)
        reward = jax.nn.softmax(heads.reward_logits[0]) @ values
    else:
        reward = codec.class_to_reward(jnp.argmax(heads.reward_logits[0]))
    obs = codec.class_to_obs(jnp.argmax(heads.obs_logits[0]))
    return reward.astype(jnp.float32), obs.astype(jnp.int32), heads.rtg[0].astype(jnp.float32)


def top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Indices of the ``k`` best scores, ties in index order; padded with invalid picks."""
    order = jnp.argsort(-scores, stable=True)
    if order.shape[0] < k:
        order = jnp.concatenate([order, jnp.full((k - order.shape[0],), order[-1])])
        valid = jnp.arange(k) < scores.shape[0]
    else:
        order, valid = order[:k], jnp.ones((k,), bool)
    return order, valid & jnp.isfinite(scores[order])


class Context(NamedTuple):
    """The observations the real context window arrived at, as a ring of ``S`` slots."""

    obs: jax.Array  # int32 [S, obs_dim]: -1 in empty slots (no real observation matches)
    reward: jax.Array  # float32 [S]: reward of the arrival; nan after a reset (no arrival)


def empty_context(size: int, obs_dim: int) -> Context:
    return Context(jnp.full((size, obs_dim), -1, jnp.int32), jnp.full((size,), jnp.nan))


def remember(ctx: Context, slot: jax.Array, obs: jax.Array, reward: jax.Array,
             first: jax.Array) -> Context:
    """Store the current state token's observation and the reward of arriving at it."""
    return Context(ctx.obs.at[slot].set(obs.astype(jnp.int32)),
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


class Beams(NamedTuple):
    first_action: jax.Array  # int32 [K]
    cum_reward: jax.Array  # float32 [K]: predicted rewards summed along the beam
    last_reward: jax.Array  # float32 [K]: the next imagined state token's previous reward
    obs: jax.Array  # int32 [K, obs_dim]: predicted observation after the last action
    valid: jax.Array  # bool [K]
    novelty: jax.Array  # float32 [K]: sum of 1 / (1 + visits) over the beam's imagined arrivals
    path: jax.Array  # int32 [K, depth, obs_dim]: the beam's imagined observations (-1: none)
    cache: Any  # per-beam imagined-token cache, leading axis K


def beam_search(wm: WorldModel, codec: Any, cfg: PlanConfig, real_cache: Any,
                action_logits: jax.Array, step: jax.Array, steps_left: jax.Array,
                key: jax.Array, context: Context | None = None,
                explore: jax.Array | bool = False) -> jax.Array:
    """First action of the best imagined plan from the current real state.

    ``real_cache`` already holds the current state token (step ``step``), whose policy
    logits are ``action_logits [A]``; ``steps_left`` (>= 1) bounds the depth at the episode's
    horizon. ``explore`` scores beams by novelty instead of predicted reward; ``context``
    (needed by ``explore`` and ``reward_memory``) is what the real window has seen.
    Everything is batched over beams and candidates; depth is a ``lax.scan``.
    """
    n_actions, k, obs_dim = codec.n_actions, cfg.beam_size, codec.obs_dim
    chex.assert_shape(action_logits, (n_actions,))
    key_root, key_scan = jax.random.split(key)
    empty = wm.init_cache(2 * cfg.depth)
    if context is None:
        context = empty_context(1, obs_dim)
    chex.assert_shape(context.obs, (None, obs_dim))

    def expand(beam_cache: Any, order: jax.Array, d: jax.Array):
        """Decode the action tokens ``order [A]`` at imagined depth ``d`` of one beam."""

        def one(a: jax.Array):
            tok = action_token(obs_dim, a, step + d)
            heads, entries = wm.decode(tok, (real_cache, beam_cache))
            return (*predict(codec, heads, cfg), entries, tok)

        reward, obs, *rest = jax.vmap(one)(order)
        if cfg.reward_memory:
            reward = recall(context, obs, reward)
        return (reward, obs, *rest)

    def scores(parent_beams: Beams, parent: jax.Array, children: tuple):
        """Children's scores and novelty counts, leading ``[K * A]`` (or ``[A]`` at the root)."""
        reward, obs, rtg = children[:3]
        visits = arrivals(context, obs).sum(-1) + jax.vmap(
            lambda o, path: matches(o[None], path).sum())(obs, parent_beams.path[parent])
        novelty = parent_beams.novelty[parent] + 1.0 / (1.0 + visits)
        value = parent_beams.cum_reward[parent] + (rtg if cfg.leaf_value else reward)
        score = jnp.where(explore, novelty, value)
        return jnp.where(parent_beams.valid[parent], score, -jnp.inf), novelty

    def select(parent_beams: Beams, parent: jax.Array, children: tuple, d: jax.Array) -> Beams:
        reward, obs, _, entries, toks = children  # leading [K * A] (or [A] at the root)
        flat_scores, novelty = scores(parent_beams, parent, children)
        idx, valid = top_k(flat_scores, k)
        pick = lambda x: x[idx]
        caches = jax.vmap(wm.write)(
            jax.tree.map(lambda c: c[parent[idx]], parent_beams.cache),
            jax.tree.map(pick, entries), jax.tree.map(pick, toks),
            jnp.full((k, 1), 2 * d, jnp.int32),
        )
        return Beams(
            first_action=parent_beams.first_action[parent[idx]],
            cum_reward=jnp.where(valid, parent_beams.cum_reward[parent[idx]] + reward[idx],
                                 -jnp.inf),
            last_reward=reward[idx], obs=obs[idx], valid=valid,
            novelty=novelty[idx], path=parent_beams.path[parent[idx]].at[:, d].set(obs[idx]),
            cache=caches,
        )

    # Depth 0: the root's actions, in policy order.
    root_order = rank_actions(action_logits, key_root, cfg.greedy)
    root = Beams(
        first_action=root_order, cum_reward=jnp.zeros((n_actions,)),
        last_reward=jnp.zeros((n_actions,)),
        obs=jnp.zeros((n_actions, obs_dim), jnp.int32), valid=jnp.ones((n_actions,), bool),
        novelty=jnp.zeros((n_actions,)), path=jnp.full((n_actions, cfg.depth, obs_dim), -1),
        cache=jax.tree.map(lambda c: jnp.broadcast_to(c, (n_actions, *c.shape)), empty),
    )
    children = expand(empty, root_order, jnp.int32(0))
    beams = select(root, jnp.arange(n_actions), children, jnp.int32(0))

    def deepen(beams: Beams, xs: tuple[jax.Array, jax.Array]) -> tuple[Beams, None]:
        d, key_d = xs
        keys = jax.random.split(key_d, k)

        def grow(cache: Any, obs: jax.Array, reward: jax.Array, key_b: jax.Array):
            tok = state_token(obs, reward, False, step + d)
            heads, entries = wm.decode(tok, (real_cache, cache))
            cache = wm.write(cache, entries, tok, jnp.full((1,), 2 * d - 1, jnp.int32))
            order = rank_actions(heads.action_logits[0], key_b, cfg.greedy)
            return cache, order, expand(cache, order, d)

        caches, _, kids = jax.vmap(grow)(beams.cache, beams.obs, beams.last_reward, keys)
        flat = jax.tree.map(lambda x: x.reshape(k * n_actions, *x.shape[2:]), kids)
        parent = jnp.repeat(jnp.arange(k), n_actions)
        new = select(beams._replace(cache=caches), parent, flat, d)
        active = d < steps_left
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, beams), None

    depths = jnp.arange(1, cfg.depth, dtype=jnp.int32)
    beams, _ = jax.lax.scan(deepen, beams, (depths, jax.random.split(key_scan, cfg.depth - 1)))
    # ``select`` keeps beams best-first (top_k's stable order), so the best plan is beam 0.
    return beams.first_action[0]

