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

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


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


class Beams(NamedTuple):
    first_action: jax.Array  # int32 [K]
    cum_reward: jax.Array  # float32 [K]: predicted rewards summed along the beam
    last_reward: jax.Array  # float32 [K]
    last_rtg: jax.Array  # float32 [K]
    obs: jax.Array  # int32 [K, obs_dim]: predicted observation after the last action
    valid: jax.Array  # bool [K]
    cache: Any  # per-beam imagined-token cache, leading axis K


def _score(beams: Beams, leaf_value: bool) -> jax.Array:
    score = beams.cum_reward
    if leaf_value:
        score = score - beams.last_reward + beams.last_rtg
    return jnp.where(beams.valid, score, -jnp.inf)


def beam_search(wm: WorldModel, codec: Any, cfg: PlanConfig, real_cache: Any,
                action_logits: jax.Array, step: jax.Array, steps_left: jax.Array,
                key: jax.Array) -> jax.Array:
    """First action of the best imagined plan from the current real state.

    ``real_cache`` already holds the current state token (step ``step``), whose policy
    logits are ``action_logits [A]``; ``steps_left`` (>= 1) bounds the depth at the episode's
    horizon. Everything is batched over beams and candidates; depth is a ``lax.scan``.
    """
    n_actions, k, obs_dim = codec.n_actions, cfg.beam_size, codec.obs_dim
    chex.assert_shape(action_logits, (n_actions,))
    key_root, key_scan = jax.random.split(key)
    empty = wm.init_cache(2 * cfg.depth)

    def expand(beam_cache: Any, order: jax.Array, d: jax.Array):
        """Decode the action tokens ``order [A]`` at imagined depth ``d`` of one beam."""

        def one(a: jax.Array):
            tok = action_token(obs_dim, a, step + d)
            heads, entries = wm.decode(tok, (real_cache, beam_cache))
            return (*predict(codec, heads, cfg), entries, tok)

        return jax.vmap(one)(order)

    def select(parent_beams: Beams, parent: jax.Array, children: tuple, flat_scores: jax.Array,
               d: jax.Array) -> Beams:
        reward, obs, rtg, entries, toks = children  # leading [K * A] (or [A] at the root)
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
            last_reward=reward[idx], last_rtg=rtg[idx], obs=obs[idx], valid=valid,
            cache=caches,
        )

    # Depth 0: the root's actions, in policy order.
    root_order = rank_actions(action_logits, key_root, cfg.greedy)
    root = Beams(
        first_action=root_order, cum_reward=jnp.zeros((n_actions,)),
        last_reward=jnp.zeros((n_actions,)), last_rtg=jnp.zeros((n_actions,)),
        obs=jnp.zeros((n_actions, obs_dim), jnp.int32), valid=jnp.ones((n_actions,), bool),
        cache=jax.tree.map(lambda c: jnp.broadcast_to(c, (n_actions, *c.shape)), empty),
    )
    _leaf = lambda kids: kids[2] if cfg.leaf_value else kids[0]  # rtg or reward
    children = expand(empty, root_order, jnp.int32(0))
    beams = select(root, jnp.arange(n_actions), children, _leaf(children), jnp.int32(0))

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
        scores = jnp.where(beams.valid, beams.cum_reward, -jnp.inf)[parent] + _leaf(flat)
        new = select(beams._replace(cache=caches), parent, flat, scores, d)
        active = d < steps_left
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, beams), None

    depths = jnp.arange(1, cfg.depth, dtype=jnp.int32)
    beams, _ = jax.lax.scan(deepen, beams, (depths, jax.random.split(key_scan, cfg.depth - 1)))
    best = jnp.argsort(-_score(beams, cfg.leaf_value), stable=True)[0]
    return beams.first_action[best]

