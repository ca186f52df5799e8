"""The paper's planner for continuous actions (Alg. 3 as its Meta-World code runs it).

An action space that cannot be enumerated is searched by sampling: at the real state the
candidates are the policy head's mode (for a Gaussian head, its mean) and ``candidates - 1``
draws from it. Each candidate's action token is decoded by the world model against the real
context cache (the shared prefix, as in ``beam``), its predicted reward (``codec.reward.mode``,
clipped to the reward's bounds by the codec) is its score, and the first action of the best
plan is taken:

    depth 0 : L candidates (mode first, then samples) -> predict (r, o') -> keep best K
    depth d : plan k: state token (o'_k, r_k) -> its policy head -> L candidates (mode first)
              -> predict (r, o') -> keep the best K of the K * L by summed predicted reward
    act     : first action of the best plan

``depth = 1`` is the paper's code (no imagined state is ever fed back, so its next
observation need not be predicted); deeper searches need the codec's next observation
(``predicted``). Ties keep the candidates' order (stable sort), so with no predicted reward
anywhere the planner takes the policy's mean.

The paper's code plans only in the second half of each 100-step episode (in-episode steps
51 to 99, once the context is full: the rollout's ``plan_start``); ``plan_last_steps`` is
that rule in the planner's terms (``acts``, on ``Situation.steps_left``); elsewhere the
rollout runs no search and takes the policy's action (a sample, as the paper's code acts).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dicp_jax.config import ConfigError
from dicp_jax.model import action_token, state_token
from dicp_jax.planning.base import PlanConfig, PlanFn, Planner, Situation
from dicp_jax.planning.beam import top_k
from dicp_jax.planning.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class SampledConfig(PlanConfig):
    candidates: int = 10  # L: the policy's mode plus L - 1 samples (paper: 10)
    keep: int = 10  # K: plans kept between imagined steps (depth > 1 only)
    depth: int = 1  # imagined steps at most (the paper's code: 1)
    # plan only while at most this many real steps are left in the episode (the paper's
    # code: in-episode steps 51..99 of its 100-step episodes, the last 49); None: always
    plan_last_steps: int | None = 49

    def validate(self) -> None:
        for k in ("candidates", "keep", "depth"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.plan_last_steps is not None and self.plan_last_steps < 1:
            raise ConfigError("plan_last_steps must be >= 1 or None (plan at every step), "
                              f"got {self.plan_last_steps}")


def draw(codec: Any, head: jax.Array, key: jax.Array, n: int) -> jax.Array:
    """``n`` candidate actions ``[n, *codec.action.shape]`` from one policy head: its mode
    first (the paper's mean), then ``n - 1`` samples."""
    dtype = codec.action.dtype
    mode = codec.action.mode(head).astype(dtype)[None]
    if n == 1:
        return mode
    samples = jax.vmap(lambda k: codec.action.sample(k, head))(jax.random.split(key, n - 1))
    return jnp.concatenate([mode, samples.astype(dtype)])


class Outcome(NamedTuple):  # predictions for a batch of candidate action tokens, leading [N]
    reward: jax.Array  # float32 [N]: the predicted reward's mode
    obs: jax.Array  # [N, obs_dim]: the predicted next observation's mode
    entries: Any  # the action tokens' cache entries
    tokens: Any  # the action tokens


def outcomes(wm: WorldModel, codec: Any, caches: tuple, actions: jax.Array,
             step: jax.Array) -> Outcome:
    """Decode one action token per candidate ``actions [N, ...]`` at ``step`` against
    ``caches`` (attended jointly)."""

    def one(a: jax.Array) -> Outcome:
        tok = action_token(codec, a, step)
        heads, entries = wm.decode(tok, caches)
        reward = codec.reward.mode(heads.reward_logits[0]).astype(jnp.float32)
        obs = codec.obs.mode(heads.obs_logits[0]).astype(codec.obs.dtype)
        return Outcome(reward, obs, entries, tok)

    return jax.vmap(one)(actions)


class Plans(NamedTuple):  # the kept plans, leading [K], best first
    first_action: jax.Array  # [K, *action_shape]
    value: jax.Array  # float32 [K]: predicted rewards summed along the plan (-inf: invalid)
    last_reward: jax.Array  # float32 [K]: the next imagined state token's previous reward
    obs: jax.Array  # [K, obs_dim]: predicted observation after the last action
    valid: jax.Array  # bool [K]
    cache: Any  # per-plan imagined-token cache


class Searched(NamedTuple):
    action: jax.Array  # [*action_shape]: first action of the best plan
    candidates: jax.Array  # [L, *action_shape]: the root candidates (the mode first)
    reward: jax.Array  # float32 [L]: their predicted rewards


def sampled_search(wm: WorldModel, codec: Any, cfg: SampledConfig, real_cache: Any,
                   action_head: jax.Array, step: jax.Array, steps_left: jax.Array,
                   key: jax.Array) -> Searched:
    """The best of the sampled plans from the current real state.

    ``real_cache`` already holds the current state token (step ``step``), whose policy head
    is ``action_head [head_size]``; ``steps_left`` (>= 1) bounds the depth at the episode's
    end. Batched over plans and candidates; depth is a ``lax.scan``."""
    n, k = cfg.candidates, cfg.keep
    chex.assert_shape(action_head, (codec.action.head_size,))
    key_root, key_scan = jax.random.split(key)
    cands = draw(codec, action_head, key_root, n)
    root = outcomes(wm, codec, (real_cache,), cands, step)
    if cfg.depth == 1:
        best, _ = top_k(root.reward, 1)
        return Searched(cands[best[0]], cands, root.reward)

    empty = wm.init_cache(2 * cfg.depth)  # slot 2d: action token of depth d; 2d-1: state
    idx, valid = top_k(root.reward, k)
    plans = Plans(
        first_action=cands[idx], value=jnp.where(valid, root.reward[idx], -jnp.inf),
        last_reward=root.reward[idx], obs=root.obs[idx], valid=valid,
        cache=jax.vmap(wm.write, (None, 0, 0, None))(
            empty, jax.tree.map(lambda x: x[idx], root.entries),
            jax.tree.map(lambda x: x[idx], root.tokens), jnp.zeros((1,), jnp.int32)),
    )

    def deepen(plans: Plans, xs: tuple[jax.Array, jax.Array]) -> tuple[Plans, None]:
        d, key_d = xs

        def grow(cache: Any, obs: jax.Array, reward: jax.Array, key_p: jax.Array):
            tok = state_token(codec, obs, reward, False, step + d)
            heads, entries = wm.decode(tok, (real_cache, cache))
            cache = wm.write(cache, entries, tok, jnp.full((1,), 2 * d - 1, jnp.int32))
            acts = draw(codec, heads.action_logits[0], key_p, n)
            return cache, outcomes(wm, codec, (real_cache, cache), acts, step + d)

        caches, kids = jax.vmap(grow)(plans.cache, plans.obs, plans.last_reward,
                                      jax.random.split(key_d, k))
        kids = jax.tree.map(lambda x: x.reshape(k * n, *x.shape[2:]), kids)  # [K * L]
        parent = jnp.repeat(jnp.arange(k), n)
        value = plans.value[parent] + kids.reward
        pick, valid = top_k(jnp.where(plans.valid[parent], value, -jnp.inf), k)
        at = lambda x: x[pick]
        new = Plans(
            first_action=plans.first_action[parent[pick]],
            value=jnp.where(valid, value[pick], -jnp.inf), last_reward=kids.reward[pick],
            obs=kids.obs[pick], valid=valid,
            cache=jax.vmap(wm.write)(
                jax.tree.map(lambda c: c[parent[pick]], caches),
                jax.tree.map(at, kids.entries), jax.tree.map(at, kids.tokens),
                jnp.full((k, 1), 2 * d, jnp.int32)),
        )
        active = d < steps_left
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, plans), None

    depths = jnp.arange(1, cfg.depth, dtype=jnp.int32)
    plans, _ = jax.lax.scan(deepen, plans, (depths, jax.random.split(key_scan, cfg.depth - 1)))
    # ``top_k`` keeps plans best-first (stable), so the best plan is plan 0.
    return Searched(plans.first_action[0], cands, root.reward)


def make(wm: WorldModel, codec: Any, cfg: SampledConfig) -> PlanFn:
    if cfg.depth > 1 and not getattr(codec.obs, "predicted", True):
        raise ConfigError(f"sampled planning to depth {cfg.depth} feeds predicted "
                          "observations back as imagined states, but this codec does not "
                          "predict the next observation (predict_next_obs=False): use depth=1")

    def plan(now: Situation, key: jax.Array) -> jax.Array:
        return sampled_search(wm, codec, cfg, now.cache, now.action_logits, now.step,
                              now.steps_left, key).action

    return plan


def acts(cfg: SampledConfig, steps_left: jax.Array) -> jax.Array:
    """The paper code's window: the last ``plan_last_steps`` steps of an episode."""
    if cfg.plan_last_steps is None:
        return jnp.array(True)
    return steps_left <= cfg.plan_last_steps


PLANNER = Planner("sampled", SampledConfig, make, "the policy's mean plus sampled actions, "
                  "scored by the in-context world model's predicted reward: DICP for "
                  "continuous actions (the paper's code)", acts=acts)

__all__ = ["PLANNER", "Outcome", "Plans", "SampledConfig", "Searched", "acts", "draw", "make",
           "outcomes", "sampled_search"]
