"""Gaussian PPO histories on a host-stepped family (real Meta-World), chunk by chunk.

The same learner as ``sources.gaussian_ppo`` (its networks, ``act``, loss and ``update``),
with the rollout moved out of JAX because the envs are MuJoCo simulations in Python:

    per env step : ONE jitted call -> actions of every task x stream (params vmapped over
                   tasks), then ``HostBatch.step`` on the host (in worker processes)
    per rollout  : ONE jitted call -> the PPO update of every task (vmapped)

Each chunk of tasks is handed to ``on_chunk`` (the dataset writer) as soon as it is done,
in the format ``dicp_jax.collect`` writes, so ``collect_dataset``, ``--resume``, training
and the experiments treat both kinds of family alike. A task's randomness is
``fold_in(seed, task index)``. Unlike the jitted collection, a history is not promised to be
independent of its chunk: the vmapped policy may round differently for another task count.

Semantics kept from SB3 (as the jitted learner): the env gets the clipped action, the buffer
the unclipped sample and its log-prob; every episode end is a time limit, bootstrapped with
``gamma V(s')`` of the true last observation; no normalisation. The policy and value nets
see the env's full observation (``source_obs_dim``: Meta-World's 39 dimensions, as the
paper's SB3 PPO), the records the model's slice (``obs_dim``).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dicp_jax.reporting import Event, Reporter, silent
from dicp_jax.rng import task_keys
from dicp_jax.sources import gaussian_ppo, ppo
from dicp_jax.sources.base import History

MIN_CHUNKS = 4  # as dicp_jax.collect: an interrupt loses at most about a quarter of the run


WORKERS_VAR = "DICP_HOST_WORKERS"


def default_workers() -> int:
    """Worker processes stepping the envs (0: in this process): ``$DICP_HOST_WORKERS`` if
    set, else one per usable core when there are at least 2. The jitted policy or model
    step and the envs take turns, so the workers have the cores while the envs step;
    measured on a quiet 2-core machine, 2 workers made a meta-test step faster than this
    process alone (BENCHMARKS.md, "Meta-World (host)"). On a machine shared with other
    jobs the pool can lose: set ``DICP_HOST_WORKERS=0`` there."""
    if os.environ.get(WORKERS_VAR, "").strip():
        try:
            n = int(os.environ[WORKERS_VAR])
        except ValueError:
            n = -1
        if n < 0:
            from dicp_jax.config import ConfigError

            raise ConfigError(f"{WORKERS_VAR} must be a count >= 0 (0: step the envs in this "
                              f"process), got {os.environ[WORKERS_VAR]!r}")
        return n
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(n) if n and n >= 2 else 0


@functools.lru_cache(maxsize=4)
def programs(obs_dim: int, action_dim: int, cfg: Any) -> dict[str, Callable]:
    """The jitted pieces, vmapped over a leading task axis (compiled once per shape):

    - ``init(keys [N, 2]) -> (params, opt_state, run_keys [N, 2])``;
    - ``policy(params, obs [N, S, D], run_keys, u, i) -> (sampled, clipped [N, S, A],
      logp, value [N, S])``: step ``i`` of update ``u``;
    - ``update(params, opt_state, traj [n_steps, N, S, ...], final [n_steps, N, S, D],
      last_obs [N, S, D], run_keys, u) -> (params, opt_state)``."""
    opt = ppo.make_optimizer(cfg)
    low, high = -jnp.ones(action_dim), jnp.ones(action_dim)  # Meta-World's Box

    def init_one(key):
        k_init, _, k_run = jax.random.split(key, 3)
        params = gaussian_ppo.init_params(k_init, obs_dim, action_dim, cfg)
        return params, opt.init(params), k_run

    def keys_of(k_run, u):
        return jax.random.split(jax.random.fold_in(k_run, u))  # (rollout, update)

    def policy_one(params, obs, k_run, u, i):
        k_roll = keys_of(k_run, u)[0]
        sampled, clipped, logp = gaussian_ppo.act(params, obs, jax.random.fold_in(k_roll, i),
                                                  low, high)
        return sampled, clipped, logp, ppo.value(params, obs)

    def update_one(params, opt_state, traj, final, last_obs, k_run, u):
        # every episode end is a time limit: r += gamma V(s'), s' the true last observation
        boot = jnp.where(traj.done, cfg.gamma * ppo.value(params, final), 0.0)
        traj = traj._replace(reward=traj.reward + boot)
        return gaussian_ppo.update(params, opt_state, traj, last_obs, keys_of(k_run, u)[1], cfg)

    return {
        "init": jax.jit(jax.vmap(init_one)),
        "policy": jax.jit(jax.vmap(policy_one, in_axes=(0, 0, 0, None, None))),
        "update": jax.jit(jax.vmap(update_one, in_axes=(0, 0, 1, 1, 0, 0, None))),
    }


def learn_chunk(env: Any, task_index: np.ndarray, cfg: Any, workers: int = 0,
                report: Reporter = silent) -> tuple[History, np.ndarray]:
    """One chunk of tasks: ``(History [N, S, T, ...] (numpy), episode_returns [N, E])``."""
    cfg.validate()
    N, S, T, H = len(task_index), cfg.n_streams, cfg.steps_per_stream, env.horizon
    D, A, dt = env.source_obs_dim, env.action_dim, env.storage_dtypes()
    fns = programs(D, A, cfg)
    params, opt_state, k_run = fns["init"](task_keys(jax.random.PRNGKey(cfg.seed), task_index))
    rec = History(obs=np.zeros((N, S, T, env.obs_dim), dt["obs"]),
                  action=np.zeros((N, S, T, A), dt["action"]),
                  reward=np.zeros((N, S, T), dt["reward"]),
                  next_obs=np.zeros((N, S, T, env.obs_dim), dt["obs"]),
                  done=np.zeros((N, S, T), dt["done"]))
    with env.batch(task_index, S, workers) as envs:
        full = envs.reset().reshape(N, S, D)  # float64, Meta-World's
        t = 0
        for u in range(cfg.n_updates):
            buf = {k: [] for k in gaussian_ppo.Rollout._fields}
            finals = []
            for i in range(cfg.n_steps):
                obs = full.astype(np.float32)
                sampled, clipped, logp, value = jax.device_get(
                    fns["policy"](params, obs, k_run, u, i))  # [N, S, A] x2, [N, S] x2
                nxt, reward, _ = envs.step(clipped.reshape(N * S, A))
                nxt = nxt.reshape(N, S, D)
                done = (t + 1) % H == 0  # every env ends its episode at the same step
                recorded = clipped if cfg.record_action == "clipped" else sampled
                rec.obs[:, :, t] = env.model_obs(full)
                rec.action[:, :, t] = recorded
                rec.reward[:, :, t] = reward.reshape(N, S)
                rec.next_obs[:, :, t] = env.model_obs(nxt)
                rec.done[:, :, t] = done
                for k, v in zip(buf, (obs, sampled, logp, value, reward.reshape(N, S)
                                      .astype(np.float32), np.full((N, S), done)),
                                strict=True):
                    buf[k].append(v)
                finals.append(nxt.astype(np.float32))
                full = envs.reset().reshape(N, S, D) if done else nxt
                t += 1
            traj = gaussian_ppo.Rollout(*(np.stack(buf[k]) for k in buf))  # [n_steps, N, S]
            params, opt_state = fns["update"](params, opt_state, traj, np.stack(finals),
                                              full.astype(np.float32), k_run, u)
            report(Event("progress", "collect (host)", {
                "name": "collect-updates", "done": u + 1, "total": cfg.n_updates,
                "unit": "update"}))
    n_ep = T // H
    returns = rec.reward[:, :, :n_ep * H].reshape(N, S, n_ep, H).sum(-1).mean(1)
    return rec, returns.astype(np.float32)


def collect_host(env: Any, task_index: np.ndarray, cfg: Any, *,
                 on_chunk: Callable[[np.ndarray, History, np.ndarray], None] | None = None,
                 chunk_size: int | None = None, report: Reporter = silent,
                 stats: dict | None = None, workers: int | None = None,
                 **_: Any) -> tuple[History, np.ndarray] | None:
    """``dicp_jax.collect.collect`` for a host-stepped family: the same arguments (its
    device options do not apply and are ignored), chunks of ``chunk_size`` tasks (default:
    a quarter of the run), envs stepped by ``workers`` processes (default: one per core)."""
    if type(cfg) is not gaussian_ppo.Config:
        from dicp_jax.config import ConfigError

        raise ConfigError(f"{type(env).__name__} histories are collected by Gaussian PPO "
                          f"(source gaussian_ppo), got a {type(cfg).__name__}")
    task_index = np.asarray(task_index, np.int64)
    workers = default_workers() if workers is None else int(workers)
    n = max(len(task_index), 1)
    chunk = max(1, min(int(chunk_size), n)) if chunk_size else math.ceil(n / MIN_CHUNKS)
    steps_per_task = cfg.n_streams * cfg.steps_per_stream
    report(Event("progress", f"collect (chunk {chunk})", {
        "name": "collect", "done": 0, "total": len(task_index), "unit": "task"}))
    kept, run_s = [], 0.0
    for s in range(0, len(task_index), chunk):
        idx = task_index[s:s + chunk]
        t0 = time.perf_counter()
        hist, rets = learn_chunk(env, idx, cfg, workers, report)
        run_s += time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(idx, hist, rets)
        else:
            kept.append((hist, rets))
        done = s + len(idx)
        report(Event("progress", f"collect (chunk {chunk})", {
            "name": "collect", "done": done, "total": len(task_index), "unit": "task",
            "postfix": {"steps_per_s": f"{done * steps_per_task / run_s:,.0f}"}}))
    if stats is not None:  # compile time is inside run_s (the programs are small)
        stats.update(compile_s=0.0, run_s=run_s, chunk=chunk,
                     env_steps=len(task_index) * steps_per_task)
    if on_chunk is not None:
        return None
    hist = History(*(np.concatenate(f) for f in zip(*(h for h, _ in kept), strict=True)))
    return hist, np.concatenate([r for _, r in kept])


__all__ = ["collect_host", "default_workers", "learn_chunk", "programs"]
