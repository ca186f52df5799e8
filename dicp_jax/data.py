"""Training data on device: learning histories, sampled as windows inside ``jit``.

The whole dataset is put on device once (``to_device``; sharded along the task axis over the
``data`` mesh axis) and every train step samples its own windows inside ``jit``: uniform
(task, stream, offset), gathered with ``shard_map`` (each device gathers the rows of its
tasks, ``psum_scatter`` hands each device its batch shard), so results do not depend on the
device count and no host work happens per step. Return-to-go is precomputed once at load.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class TrainData(NamedTuple):  # [N, S, T, ...] with N padded to a multiple of the devices
    obs: jax.Array  # [N, S, T, obs_dim] (compact ints for grids)
    action: jax.Array  # [N, S, T]
    reward: jax.Array  # [N, S, T]
    next_obs: jax.Array  # [N, S, T, obs_dim]
    done: jax.Array  # [N, S, T] int8
    rtg: jax.Array  # [N, S, T] float32: return-to-go within the episode
    imitate: jax.Array  # [N] float32: 1 = the policy head imitates this task's learner
    # Optional (``counterfactuals``): per transition another action and its true outcome.
    cf_action: jax.Array | None = None  # [N, S, T] int8
    cf_reward: jax.Array | None = None  # [N, S, T]
    cf_next_obs: jax.Array | None = None  # [N, S, T, obs_dim]
    # Optional (a method's ``prepare_data``): the family oracle's action at every step (DPT).
    label: jax.Array | None = None  # [N, S, T] int8


class Targets(NamedTuple):  # per transition [..., n]
    action: jax.Array  # int32
    reward: jax.Array  # float32
    next_obs: jax.Array  # [..., n, obs_dim]
    rtg: jax.Array  # float32
    imitate: jax.Array  # float32: weight of the imitation target (its task's ``imitate``)
    cf_action: jax.Array | None = None  # int32: the other action at each S_t
    cf_reward: jax.Array | None = None  # float32: its true reward
    cf_next_obs: jax.Array | None = None  # [..., n, obs_dim]: its true next observation


def return_to_go(reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Sum of rewards from t to the end of t's episode, along the last axis (host, once)."""
    reward = np.asarray(reward, np.float32)
    out = np.zeros_like(reward)
    acc = np.zeros(reward.shape[:-1], np.float32)
    for t in range(reward.shape[-1] - 1, -1, -1):
        acc = reward[..., t] + np.where(done[..., t], 0.0, acc)
        out[..., t] = acc
    return out


def counterfactuals(env_name: str, history, task_index, seed: int = 0):
    """Per recorded transition, another action and the env's true outcome of it, as numpy
    ``(cf_action int8 [N, S, T], cf_reward [N, S, T], cf_next_obs [N, S, T, obs_dim])``.

    Why: the dynamics heads otherwise only learn the outcomes of the source learner's own
    actions, while a planner asks about every action. Once PPO converges its paths never
    step off the way to the goal, and the model learned to expect reward on cells sharing
    a coordinate with the goal, which the planner then walked to. Needs an env whose
    observation is its whole state (``state_from_obs``); the action drawn at (task, stream,
    step) depends only on the seed and the task's global index."""
    import dicp_envs
    from dicp_jax.config import ConfigError

    env, _ = dicp_envs.make(env_name)
    if not env.observation_is_state:
        raise ConfigError(f"counterfactual targets need an env whose observation is its state "
                          f"(declared observation_is_state); {env_name} is not one")
    task_index = np.asarray(task_index, np.int64)
    params = env.params_for(np.asarray(env.task_list())[task_index])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(task_index)
    out = _counterfactual_fn(env_name)(keys, params, jnp.asarray(history.obs),
                                       jnp.asarray(history.action))
    a, r, nobs = jax.device_get(out)
    return (a.astype(np.int8), r.astype(np.asarray(history.reward).dtype),
            nobs.astype(np.asarray(history.obs).dtype))


@functools.lru_cache(maxsize=4)
def _counterfactual_fn(env_name: str):
    import dicp_envs

    env, _ = dicp_envs.make(env_name)

    def task(key, p, obs, action):  # obs [S, T, d], action [S, T]
        shift = jax.random.randint(key, action.shape, 1, env.num_actions)
        other = (action.astype(jnp.int32) + shift) % env.num_actions  # never the taken one

        def outcome(o, a):
            nobs, _, r, _, _ = env.step_env(key, env.state_from_obs(o), a, p)
            return nobs, r

        nobs, r = jax.vmap(jax.vmap(outcome))(obs, other)
        return other, r, nobs

    return jax.jit(jax.vmap(task))


def prepare(history, n_shards: int = 1, imitate=None, cf=None,
            adapt: Callable[[TrainData], TrainData] | None = None) -> TrainData:
    """History (numpy) -> TrainData (numpy), task axis zero-padded to a multiple of n_shards.

    ``imitate`` [N] (default all 1) weighs each task's imitation targets; a task with 0 only
    teaches the dynamics heads. ``cf`` adds ``counterfactuals``. ``adapt`` is the method's
    own preparation of the real tasks' data (``prepare_data``: labels, reordering), applied
    before padding. Padded tasks are never sampled (the sampler draws task < n_real)."""
    done = np.asarray(history.done).astype(bool)
    n_tasks = done.shape[0]
    imitate = np.ones(n_tasks, np.float32) if imitate is None else np.asarray(imitate, np.float32)
    if imitate.shape != (n_tasks,):
        raise ValueError(f"imitate must have one weight per task ({n_tasks}), got {imitate.shape}")
    arrays = TrainData(np.asarray(history.obs), np.asarray(history.action),
                       np.asarray(history.reward), np.asarray(history.next_obs),
                       done.astype(np.int8), return_to_go(history.reward, done), imitate,
                       *(cf or ()))
    if adapt is not None:
        arrays = adapt(arrays)
    pad = (-arrays.obs.shape[0]) % n_shards
    if pad:
        arrays = jax.tree.map(
            lambda a: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]), arrays)
    return arrays


def to_device(data: TrainData, mesh: Mesh) -> TrainData:
    return jax.device_put(data, NamedSharding(mesh, P("data")))


def sample_indices(key, batch: int, n_tasks: int, n_streams: int, n_steps: int, n: int,
                   start_prob: float = 0.0):
    """Uniform (task, stream, offset) of ``batch`` windows of n steps; a ``start_prob``
    fraction of them (in expectation) starts at the stream's first step."""
    kt, ks, ko = jax.random.split(key, 3)
    offset = jax.random.randint(ko, (batch,), 0, n_steps - n + 1)
    if start_prob > 0.0:
        at_start = jax.random.bernoulli(jax.random.fold_in(ko, 1), start_prob, (batch,))
        offset = jnp.where(at_start, 0, offset)
    return (jax.random.randint(kt, (batch,), 0, n_tasks),
            jax.random.randint(ks, (batch,), 0, n_streams), offset)


def gather_windows(data: TrainData, mesh: Mesh, task, stream, offset, n: int,
                   window: Callable) -> tuple[Any, Targets]:
    """Windows for global indices [B] from the task-sharded data, laid out by ``window``
    (the method's ``window(data, task, stream, offset, n) -> (tokens, Targets)``); output
    sharded on batch."""
    n_dev = mesh.shape["data"]

    def local(d, task, stream, offset):
        n_local = d.obs.shape[0]
        lt = task - jax.lax.axis_index("data") * n_local
        mine = (lt >= 0) & (lt < n_local)
        out = jax.vmap(lambda t, s, o: window(d, t, s, o, n))(
            jnp.clip(lt, 0, n_local - 1), stream, offset)

        def share(a):
            dt = a.dtype
            a = jnp.where(mine.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0)
            a = a.astype(jnp.int32) if dt == jnp.bool_ else a
            return jax.lax.psum_scatter(a, "data", scatter_dimension=0, tiled=True).astype(dt)

        return jax.tree.map(share, out)

    if n_dev == 1:  # same result, no collective
        return jax.vmap(lambda t, s, o: window(data, t, s, o, n))(task, stream, offset)
    return jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P(), P(), P()),
                         out_specs=P("data"))(data, task, stream, offset)


__all__ = ["Targets", "TrainData", "counterfactuals", "gather_windows", "prepare",
           "return_to_go", "sample_indices", "to_device"]
