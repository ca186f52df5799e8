"""Training data on device: windows of learning histories -> model tokens and targets.

The whole dataset is put on device once (``to_device``; sharded along the task axis over the
``data`` mesh axis) and every train step samples its own windows inside ``jit``: uniform
(task, stream, offset), gathered with ``shard_map`` (each device gathers the rows of its
tasks, ``psum_scatter`` hands each device its batch shard), so results do not depend on the
device count and no host work happens per step. Return-to-go is precomputed once at load.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dicp_jax.model import Tokens, interleave


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
    if not observation_is_state(env):
        raise ConfigError(f"counterfactual targets need an env whose observation is its state "
                          f"(state_from_obs); {env_name} has none")
    task_index = np.asarray(task_index, np.int64)
    params = env.params_for(np.asarray(env.task_list())[task_index])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(task_index)
    out = _counterfactual_fn(env_name)(keys, params, jnp.asarray(history.obs),
                                       jnp.asarray(history.action))
    a, r, nobs = jax.device_get(out)
    return (a.astype(np.int8), r.astype(np.asarray(history.reward).dtype),
            nobs.astype(np.asarray(history.obs).dtype))


def observation_is_state(env: Any) -> bool:
    """Whether the env can rebuild its state from an observation (``state_from_obs``), so
    an observation says everything a transition's outcome depends on."""
    return hasattr(env, "state_from_obs")


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


def prepare(history, n_shards: int = 1, imitate=None, cf=None) -> TrainData:
    """History (numpy) -> TrainData (numpy), task axis zero-padded to a multiple of n_shards.

    ``imitate`` [N] (default all 1) weighs each task's imitation targets; a task with 0 only
    teaches the dynamics heads. ``cf`` adds ``counterfactuals``. Padded tasks are never
    sampled (the sampler draws task < n_real)."""
    done = np.asarray(history.done).astype(bool)
    n_tasks = done.shape[0]
    imitate = np.ones(n_tasks, np.float32) if imitate is None else np.asarray(imitate, np.float32)
    if imitate.shape != (n_tasks,):
        raise ValueError(f"imitate must have one weight per task ({n_tasks}), got {imitate.shape}")
    arrays = TrainData(np.asarray(history.obs), np.asarray(history.action),
                       np.asarray(history.reward), np.asarray(history.next_obs),
                       done.astype(np.int8), return_to_go(history.reward, done), imitate,
                       *(cf or ()))
    pad = (-arrays.obs.shape[0]) % n_shards
    if pad:
        arrays = jax.tree.map(
            lambda a: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]), arrays)
    return arrays


def to_device(data: TrainData, mesh: Mesh) -> TrainData:
    return jax.device_put(data, NamedSharding(mesh, P("data")))


def window(data: TrainData, task, stream, offset, n: int) -> tuple[Tokens, Targets]:
    """One window of n transitions starting at ``offset`` -> Tokens [2n], Targets [n].

    The state token of transition t carries r_{t-1} and first_t = done_{t-1} from the data
    (r = 0, first = True only at the very start of a stream), exactly as a cache filled while
    acting would; its step index is window-relative (RoPE is relative)."""
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a[task, stream], offset, n, 0)
    prev = lambda a, fill: jnp.where(offset > 0,
                                     a[task, stream][jnp.maximum(offset - 1, 0)], fill)
    reward = sl(data.reward).astype(jnp.float32)
    done = sl(data.done).astype(bool)
    prev_reward = jnp.concatenate([prev(data.reward, 0).astype(jnp.float32)[None], reward[:-1]])
    first = jnp.concatenate([prev(data.done, 1).astype(bool)[None], done[:-1]])
    obs, action = sl(data.obs), sl(data.action)
    tokens = interleave(obs.astype(jnp.int32), prev_reward, first, action,
                        jnp.arange(n, dtype=jnp.int32))
    targets = Targets(action.astype(jnp.int32), reward, sl(data.next_obs).astype(jnp.int32),
                      sl(data.rtg), jnp.full((n,), data.imitate[task], jnp.float32))
    if data.cf_action is not None:
        targets = targets._replace(cf_action=sl(data.cf_action).astype(jnp.int32),
                                   cf_reward=sl(data.cf_reward).astype(jnp.float32),
                                   cf_next_obs=sl(data.cf_next_obs).astype(jnp.int32))
    return tokens, targets


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


def gather_windows(data: TrainData, mesh: Mesh, task, stream, offset,
                   n: int) -> tuple[Tokens, Targets]:
    """Windows for global indices [B] from the task-sharded data; output sharded on batch."""
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


def goal_seen(next_obs: jax.Array, reward: jax.Array) -> jax.Array:
    """bool [..., n]: an earlier transition of the window was rewarded in the same cell s'."""
    same = jnp.all(next_obs[..., :, None, :] == next_obs[..., None, :, :], -1)  # [.., i, j]
    earlier = jnp.tril(jnp.ones(same.shape[-2:], bool), -1)
    return jnp.any(same & earlier & (reward[..., None, :] > 0), -1)


def after_reward(reward: jax.Array) -> jax.Array:
    """bool [..., n]: an earlier transition of the window was rewarded."""
    pos = (reward > 0).astype(jnp.int32)
    return jnp.cumsum(pos, -1) - pos > 0


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


class Validator:
    """Fixed windows of held-out tasks' histories -> accuracy metrics of a set of params.

    Reported: action / reward / next-obs accuracy, reward recall on rewarding transitions
    (also restricted to those whose rewarding cell was already rewarded earlier in the
    window, and to those of them that follow an unrewarded step), the false-alarm rate on
    unrewarded transitions once the window holds a reward (a planner chases those), each
    accuracy also by position in the context."""

    def __init__(self, model, test_data: TrainData, n_windows: int, seed: int = 0,
                 chunk: int = 128, mesh: Mesh | None = None):
        n = model.cfg.n_transit
        self.chunk = min(chunk, n_windows)
        n_windows = -(-n_windows // self.chunk) * self.chunk
        d = jax.device_put(test_data, None if mesh is None else NamedSharding(mesh, P()))
        idx = sample_indices(jax.random.PRNGKey(seed + 7919), n_windows,
                             *d.action.shape[:3], n)
        get = jax.jit(jax.vmap(window, (None, 0, 0, 0, None)), static_argnums=4)
        self.tokens, self.targets = get(d, *idx, n)
        self.seen = jax.jit(goal_seen)(self.targets.next_obs, self.targets.reward)
        self.model, self.n_windows = model, n_windows
        self._stats = _chunk_stats(model.cfg, model.codec)

    def __call__(self, params) -> dict:
        sums = None
        for i in range(0, self.n_windows, self.chunk):
            part = jax.tree.map(lambda a, i=i: a[i:i + self.chunk],
                                (self.tokens, self.targets, self.seen))
            s = self._stats(params, *part)
            sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        s = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
        w = float(self.n_windows)
        ratio = lambda a, b: float(a.sum() / b.sum()) if b.sum() > 0 else None
        by_pos = lambda a, b: [float(x / y) if y > 0 else None for x, y in zip(a, b, strict=True)]
        return {
            "action_acc": float(s["action_ok"].sum() / (w * len(s["action_ok"]))),
            "reward_acc": float(s["reward_ok"].sum() / (w * len(s["reward_ok"]))),
            "reward_recall": ratio(s["rewarding_ok"], s["rewarding"]),
            "reward_recall_seen": ratio(s["seen_ok"], s["seen"]),
            # arriving at a goal rewarded earlier in the window, after an unrewarded step:
            # the in-context lookup the planner needs, without the reward-follows-reward cue
            "reward_recall_arrival": ratio(s["arrival_ok"], s["arrival"]),
            "reward_false_alarm": ratio(s["false_alarm"], s["known_neg"]),
            "obs_acc": float(s["obs_ok"].sum() / (w * len(s["obs_ok"]))),
            **({} if "cf_ok" not in s else {
                # another action than the learner's at every step (``counterfactuals``):
                # what a planner asks; false alarms counted once the window holds a reward
                "cf_reward_acc": float(s["cf_ok"].sum() / (w * len(s["cf_ok"]))),
                "cf_reward_recall": ratio(s["cf_rewarding_ok"], s["cf_rewarding"]),
                "cf_false_alarm": ratio(s["cf_false_alarm"], s["cf_known_neg"])}),
            "n_rewarding": int(s["rewarding"].sum()), "n_rewarding_seen": int(s["seen"].sum()),
            "n_arrival": int(s["arrival"].sum()),
            "by_position": {"action_acc": (s["action_ok"] / w).tolist(),
                            "reward_acc": (s["reward_ok"] / w).tolist(),
                            "obs_acc": (s["obs_ok"] / w).tolist(),
                            "reward_recall": by_pos(s["rewarding_ok"], s["rewarding"])},
        }


@functools.lru_cache(maxsize=8)
def _chunk_stats(model_cfg, codec):
    """Jitted per-position correct counts of one chunk of windows (cached per model)."""
    from dicp_jax.model import DICPTransformer

    model = DICPTransformer(model_cfg, codec)
    return jax.jit(functools.partial(_stats_impl, model))


def _stats_impl(model, params, tokens, targets, seen):
    from dicp_jax.model import branch_heads

    codec = model.codec
    heads, kv = jax.vmap(lambda t: model.apply({"params": params}, t))(tokens)
    act_ok = jnp.argmax(heads.action_logits[:, 0::2], -1) == targets.action
    rew_ok = codec.reward_correct(heads.reward_logits[:, 1::2], targets.reward)
    obs_ok = codec.obs_correct(heads.obs_logits[:, 1::2], targets.next_obs)
    pos = targets.reward > 0
    arrival = pos & seen & (tokens.prev_reward[:, 0::2] <= 0)  # not "reward follows reward"
    known_neg = ~pos & after_reward(targets.reward)  # a planner would chase a false alarm
    f = lambda x: x.astype(jnp.float32).sum(0)  # -> by position [n]
    cf = {}
    if targets.cf_action is not None:
        key = jax.random.PRNGKey(0)  # deterministic: no dropout
        bh = jax.vmap(lambda t, v, a: branch_heads(model, params, t, v, a, key))(
            tokens, kv, targets.cf_action)
        cf_ok = codec.reward_correct(bh.reward_logits, targets.cf_reward)
        cf_pos = targets.cf_reward > 0
        cf_neg = ~cf_pos & after_reward(targets.reward)
        cf = {"cf_ok": f(cf_ok), "cf_rewarding": f(cf_pos), "cf_rewarding_ok": f(cf_pos & cf_ok),
              "cf_known_neg": f(cf_neg), "cf_false_alarm": f(cf_neg & ~cf_ok)}
    return cf | {"action_ok": f(act_ok), "reward_ok": f(rew_ok), "obs_ok": f(obs_ok),
            "rewarding": f(pos), "rewarding_ok": f(pos & rew_ok),
            "seen": f(pos & seen), "seen_ok": f(pos & seen & rew_ok),
            "arrival": f(arrival), "arrival_ok": f(arrival & rew_ok),
            "known_neg": f(known_neg), "false_alarm": f(known_neg & ~rew_ok)}


__all__ = ["Targets", "TrainData", "Validator", "after_reward", "counterfactuals",
           "gather_windows", "goal_seen", "observation_is_state", "prepare", "return_to_go",
           "sample_indices", "synthetic_history", "to_device", "window"]
