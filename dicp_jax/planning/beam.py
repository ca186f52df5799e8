"""The paper's planner: beam search with the in-context world model (discrete actions).

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

A beam's score is its predicted rewards summed (the paper) unless the rollout hands in
another ``Scorer`` (``planning.lookups``, beyond the paper); the search itself does not
change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dicp_jax.config import ConfigError
from dicp_jax.model import Heads, action_token, state_token
from dicp_jax.planning.base import PREDICTED_REWARD, PlanConfig, PlanFn, Planner, Scorer, Situation
from dicp_jax.planning.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class BeamConfig(PlanConfig):
    beam_size: int = 10
    depth: int = 8  # imagined steps at most (paper: grid - 1 Darkroom, 2 (grid - 1) others)
    greedy: bool = False  # rank actions by a sample w/o replacement (paper) or by probability

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")


def rank_actions(logits: jax.Array, key: jax.Array, greedy: bool) -> jax.Array:
    """Actions best-first: by probability, or a sample without replacement (Gumbel top-k)."""
    if not greedy:
        logits = jax.nn.log_softmax(logits) + jax.random.gumbel(key, logits.shape)
    return jnp.argsort(-logits, stable=True).astype(jnp.int32)


def predict(codec: Any, heads: Heads) -> tuple[jax.Array, jax.Array]:
    """(reward, next observation) of one action token's heads ``[1, ...]``: their modes."""
    reward = codec.reward.mode(heads.reward_logits[0]).astype(jnp.float32)
    return reward, codec.obs.mode(heads.obs_logits[0]).astype(codec.obs.dtype)


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
    cum_reward: jax.Array  # float32 [K]: imagined rewards summed along the beam
    last_reward: jax.Array  # float32 [K]: the next imagined state token's previous reward
    obs: jax.Array  # [K, obs_dim]: predicted observation after the last action
    valid: jax.Array  # bool [K]
    scored: Any  # the scorer's per-beam state, leading axis K
    cache: Any  # per-beam imagined-token cache, leading axis K


def beam_search(wm: WorldModel, codec: Any, cfg: BeamConfig, real_cache: Any,
                action_logits: jax.Array, step: jax.Array, steps_left: jax.Array,
                key: jax.Array, scorer: Scorer = PREDICTED_REWARD) -> jax.Array:
    """First action of the best imagined plan from the current real state.

    ``real_cache`` already holds the current state token (step ``step``), whose policy
    logits are ``action_logits [A]``; ``steps_left`` (>= 1) bounds the depth at the episode's
    horizon. Everything is batched over beams and candidates; depth is a ``lax.scan``.
    """
    n_actions, k, obs_dim = codec.action.n, cfg.beam_size, codec.obs.dim
    chex.assert_shape(action_logits, (n_actions,))
    key_root, key_scan = jax.random.split(key)
    empty = wm.init_cache(2 * cfg.depth)

    def expand(beam_cache: Any, order: jax.Array, d: jax.Array):
        """Decode the action tokens ``order [A]`` at imagined depth ``d`` of one beam."""

        def one(a: jax.Array):
            tok = action_token(codec, a, step + d)
            heads, entries = wm.decode(tok, (real_cache, beam_cache))
            return (*predict(codec, heads), entries, tok)

        reward, obs, entries, toks = jax.vmap(one)(order)
        return scorer.reward(obs, reward), obs, entries, toks

    def select(parent_beams: Beams, parent: jax.Array, children: tuple, d: jax.Array) -> Beams:
        reward, obs, entries, toks = children  # leading [K * A] (or [A] at the root)
        chex.assert_equal_shape((reward, parent))
        value = parent_beams.cum_reward[parent] + reward
        scored = jax.tree.map(lambda s: s[parent], parent_beams.scored)
        score, scored = scorer.score(scored, obs, value, d)
        idx, valid = top_k(jnp.where(parent_beams.valid[parent], score, -jnp.inf), k)
        pick = lambda x: x[idx]
        caches = jax.vmap(wm.write)(
            jax.tree.map(lambda c: c[parent[idx]], parent_beams.cache),
            jax.tree.map(pick, entries), jax.tree.map(pick, toks),
            jnp.full((k, 1), 2 * d, jnp.int32),
        )
        return Beams(
            first_action=parent_beams.first_action[parent[idx]],
            cum_reward=jnp.where(valid, value[idx], -jnp.inf),
            last_reward=reward[idx], obs=obs[idx], valid=valid,
            scored=jax.tree.map(pick, scored), cache=caches,
        )

    # Depth 0: the root's actions, in policy order.
    root_order = rank_actions(action_logits, key_root, cfg.greedy)
    root = Beams(
        first_action=root_order, cum_reward=jnp.zeros((n_actions,)),
        last_reward=jnp.zeros((n_actions,)),
        obs=jnp.zeros((n_actions, obs_dim), codec.obs.dtype),
        valid=jnp.ones((n_actions,), bool), scored=scorer.init(n_actions, cfg.depth),
        cache=jax.tree.map(lambda c: jnp.broadcast_to(c, (n_actions, *c.shape)), empty),
    )
    children = expand(empty, root_order, jnp.int32(0))
    beams = select(root, jnp.arange(n_actions), children, jnp.int32(0))

    def deepen(beams: Beams, xs: tuple[jax.Array, jax.Array]) -> tuple[Beams, None]:
        d, key_d = xs
        keys = jax.random.split(key_d, k)

        def grow(cache: Any, obs: jax.Array, reward: jax.Array, key_b: jax.Array):
            tok = state_token(codec, obs, reward, False, step + d)
            heads, entries = wm.decode(tok, (real_cache, cache))
            cache = wm.write(cache, entries, tok, jnp.full((1,), 2 * d - 1, jnp.int32))
            order = rank_actions(heads.action_logits[0], key_b, cfg.greedy)
            return cache, expand(cache, order, d)

        caches, kids = jax.vmap(grow)(beams.cache, beams.obs, beams.last_reward, keys)
        flat = jax.tree.map(lambda x: x.reshape(k * n_actions, *x.shape[2:]), kids)
        parent = jnp.repeat(jnp.arange(k), n_actions)
        new = select(beams._replace(cache=caches), parent, flat, d)
        active = d < steps_left
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, beams), None

    depths = jnp.arange(1, cfg.depth, dtype=jnp.int32)
    beams, _ = jax.lax.scan(deepen, beams, (depths, jax.random.split(key_scan, cfg.depth - 1)))
    # ``select`` keeps beams best-first (top_k's stable order), so the best plan is beam 0.
    return beams.first_action[0]


def make(wm: WorldModel, codec: Any, cfg: BeamConfig) -> PlanFn:
    if getattr(codec.action, "n", None) is None:
        raise ConfigError("beam search enumerates actions: it needs a discrete action codec "
                          f"(one with ``n``), got {type(codec.action).__name__}")

    def plan(now: Situation, key: jax.Array) -> jax.Array:
        return beam_search(wm, codec, cfg, now.cache, now.action_logits, now.step,
                           now.steps_left, key, now.scorer)

    return plan


PLANNER = Planner("beam", BeamConfig, make, "beam search with the in-context world model: "
                  "DICP (the paper's planner)", uses_scorer=True)

__all__ = ["PLANNER", "BeamConfig", "Beams", "beam_search", "make", "predict", "rank_actions",
           "top_k"]
