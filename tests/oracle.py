"""A hand-made world model with the TRUE dynamics of one Darkroom / Key-to-Door task.

It implements the planner's ``WorldModel`` interface (init_cache / decode / write) over a
cache of raw token facts: each entry remembers its observation and how many rewards the
episode had collected before it, which is all the grid envs' dynamics need. Policy logits
are a fixed preference vector, so the planner's tie rule is observable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dicp_envs.grid import move
from dicp_jax.model import EMPTY_STEP, Heads, Tokens, token_pos
from dicp_jax.world_model import WorldModel


class Entry(NamedTuple):
    obs: jax.Array  # int32 [T, 2]: the state token's observation (action entries copy it)
    n_rew: jax.Array  # int32 [T]: rewards collected in the episode before this state
    step: jax.Array  # int32 [T]
    pos: jax.Array  # int32 [T]


def _empty(length: int) -> Entry:
    return Entry(jnp.zeros((length, 2), jnp.int32), jnp.zeros((length,), jnp.int32),
                 jnp.full((length,), EMPTY_STEP, jnp.int32), jnp.full((length,), -1, jnp.int32))


def oracle(env, task, policy_logits, zero_reward: bool = False, logit: float = 30.0) -> WorldModel:
    """True dynamics of ``task`` (Darkroom ``goal`` or Key-to-Door ``key``/``door``)."""
    n_cells = env.grid_size**2

    def reward_of(pos: jax.Array, n_rew: jax.Array) -> jax.Array:
        if hasattr(task, "goal"):
            r = jnp.all(pos == task.goal)
        else:
            r = jnp.where(n_rew == 0, jnp.all(pos == task.key),
                          (n_rew == 1) & jnp.all(pos == task.door))
        return jnp.where(zero_reward, False, r).astype(jnp.int32)

    def decode(tokens: Tokens, caches: tuple):
        def one(known: Entry, tok: Tokens):
            pos = token_pos(tok)
            hit = (known.pos == pos - 1) & (known.step != EMPTY_STEP)
            prev = jax.tree.map(lambda x: x[jnp.argmax(hit)], known)
            is_state = tok.kind == 0
            n_rew = jnp.where(tok.first, 0, prev.n_rew + tok.prev_reward.astype(jnp.int32))
            entry = Entry(jnp.where(is_state, tok.obs.astype(jnp.int32), prev.obs),
                          jnp.where(is_state, n_rew, prev.n_rew), tok.step, pos)
            nxt = move(prev.obs, tok.action, env.grid_size)
            r = reward_of(nxt, prev.n_rew)
            heads = Heads(
                action_logits=jnp.asarray(policy_logits, jnp.float32),
                reward_logits=logit * jax.nn.one_hot(r, 2),
                obs_logits=logit * jax.nn.one_hot(nxt[0] * env.grid_size + nxt[1], n_cells),
                rtg=r.astype(jnp.float32),
            )
            known = jax.tree.map(lambda a, e: jnp.concatenate([a, e[None]]), known, entry)
            return known, (heads, entry)

        known = jax.tree.map(lambda *xs: jnp.concatenate(xs), _empty(0), *caches)
        toks = jax.tree.map(lambda x: x, tokens)
        heads, entries = [], []
        for i in range(tokens.step.shape[0]):  # T is 1 or 2 here: unrolled
            known, (h, e) = one(known, jax.tree.map(lambda x, i=i: x[i], toks))
            heads.append(h)
            entries.append(e)
        stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
        return stack(heads), stack(entries)

    def write(cache: Entry, entries: Entry, tokens: Tokens, slots: jax.Array) -> Entry:
        return jax.tree.map(lambda c, e: c.at[slots].set(e), cache, entries)

    return WorldModel(_empty, decode, write)
