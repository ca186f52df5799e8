"""Library-grade helpers for tests and benchmarks: an oracle world model and scripted
histories, so neither has to import ``tests/`` or train a model to exercise the planner,
the meta-test or the training pipeline.

- ``oracle``: a hand-made world model with the TRUE dynamics of one Darkroom /
  Key-to-Door task behind the planner's ``WorldModel`` interface (init_cache / decode /
  write). Its cache holds raw token facts: each entry remembers its observation and how
  many rewards the episode had collected before it, which is all the grid envs' dynamics
  need. Policy logits are a fixed preference vector, so the planner's tie rule is
  observable.
- ``synthetic_history``: epsilon-greedy "learning" histories around the env's optimal
  action (``History`` contract), a stand-in for PPO collection where only the format and
  a learning-like trend matter.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dicp_envs.grid import move
from dicp_jax.model import EMPTY_STEP, Heads, Tokens, token_pos
from dicp_jax.planning.world_model import WorldModel


# -- oracle world model -----------------------------------------------------------------------
class Entry(NamedTuple):
    obs: jax.Array  # int32 [T, 2]: the state token's observation (action entries copy it)
    n_rew: jax.Array  # int32 [T]: rewards collected in the episode before this state
    step: jax.Array  # int32 [T]
    pos: jax.Array  # int32 [T]


def _empty(length: int) -> Entry:
    return Entry(jnp.zeros((length, 2), jnp.int32), jnp.zeros((length,), jnp.int32),
                 jnp.full((length,), EMPTY_STEP, jnp.int32), jnp.full((length,), -1, jnp.int32))


def oracle(env: Any, task: Any, policy_logits: Any, zero_reward: bool = False,
           logit: float = 30.0) -> WorldModel:
    """True dynamics of ``task`` (Darkroom ``goal`` or Key-to-Door ``key``/``door``);
    ``zero_reward`` predicts no reward anywhere (a model that has not found the goal)."""
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


# -- scripted histories -----------------------------------------------------------------------
def synthetic_history(env_name: str, task_index, n_streams: int, n_steps: int, key,
                      eps_start: float = 1.0, eps_end: float = 0.05):
    """Scripted 'learning' histories: epsilon-greedy around the optimal action, epsilon
    decaying linearly along each stream. For tests and benchmarks (History contract)."""
    import dicp_envs
    from dicp_jax.history import History

    env, _ = dicp_envs.make(env_name)
    tasks = np.asarray(env.task_list(), np.int32)[np.asarray(task_index)]
    keys = jax.random.split(key, len(tasks) * n_streams).reshape(len(tasks), n_streams, -1)
    eps = jnp.linspace(eps_start, eps_end, n_steps)
    obs, a, r, nobs, done = jax.device_get(
        _synthetic_fn(env_name, n_steps)(keys, env.params_for(tasks), eps))
    return History(obs.astype(np.int8), a.astype(np.int8), r.astype(np.float16),
                   nobs.astype(np.int8), done.astype(bool))


@functools.lru_cache(maxsize=4)
def _synthetic_fn(env_name: str, n_steps: int):
    import dicp_envs

    env, _ = dicp_envs.make(env_name)

    def stream(key, p, eps):
        obs0, state0 = env.reset(jax.random.fold_in(key, 2**31), p)

        def step(carry, xs):
            obs, state = carry
            k, e = xs
            ka, kr, ks = jax.random.split(k, 3)
            a = jnp.where(jax.random.uniform(kr) < e,
                          jax.random.randint(ka, (), 0, env.num_actions),
                          env.optimal_action(state, p))
            nobs, nstate, r, term, trunc, info = env.step(ks, state, a, p)
            done = term | trunc
            true_next = jnp.where(done, info.get("final_observation", nobs), nobs)
            return (nobs, nstate), (obs, a, r, true_next, done)

        _, out = jax.lax.scan(step, (obs0, state0), (jax.random.split(key, n_steps), eps))
        return out

    return jax.jit(jax.vmap(jax.vmap(stream, (0, None, None)), (0, 0, None)))


__all__ = ["Entry", "oracle", "synthetic_history"]
