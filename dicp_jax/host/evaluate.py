"""The meta-test on a host-stepped family (real Meta-World): a Python loop over env steps
around ONE jitted agent step for all tasks.

    reset    : HostBatch.reset (host) -> jitted init of every task's agent, first action
    each step: HostBatch.step(actions) (host) -> ONE jitted call, vmapped over tasks: take in
               the outcome (the transition that led here), then ``evaluate.make_act``: the
               method's agent ``query``, the policy's sample, the planner, ``commit``

The agent step is ``dicp_jax.evaluate.make_act``, the one the one-jit rollout scans, with
the same fixed-size agent state (KV ring cache, buffers) and the same key stream per task
(``fold_in(seed, task index)``), so a method or planner runs here unchanged. Episodes are
``env.horizon`` steps, every env is reset at the same step, none terminates; an episode
succeeded if Meta-World's ``info["success"]`` was set at any of its steps (the table adds
the paper code's cumulative rate).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from dicp_jax import methods
from dicp_jax.evaluate import (
    EvalConfig,
    Rollout,
    check_env,
    first_carry,
    make_act,
    split_step_keys,
    take_in,
    target_return,
)
from dicp_jax.rng import task_keys


def make_host_steps(env: Any, agent_factory: Any, codec: Any, cfg: EvalConfig,
                    n_transit: int) -> tuple[Any, Any]:
    """``(start, step)``, jitted and vmapped over tasks (model params shared):

    - ``start(params, keys [N, 2], obs [N, D]) -> (carry, action [N, A])``: every agent's
      initial state and its action at the first (reset) observation;
    - ``step(params, carry, action, obs, reward [N], done [], final [N, D]) -> (carry,
      action)``: take in the outcome of ``action`` (``obs``: the next observation, a reset
      one when ``done``; ``final``: the true last one), then act."""
    cfg.validate()
    check_env(env, cfg)

    def act(params, carry):
        step_act = make_act(agent_factory(params), codec, cfg, n_transit, env.horizon)
        key, key_act, _ = split_step_keys(carry.key)  # as the rollout
        carry, action, _ = step_act(carry._replace(key=key), key_act)
        return carry, action

    def start_one(params, key, obs):
        agent = agent_factory(params)
        _, key = jax.random.split(key)  # the rollout's reset key (unused: the host resets)
        return first_carry(agent, codec, n_transit, obs, None,
                           target_return(env, None, cfg), key)

    def start_all(params, keys, obs):
        return act(params, jax.vmap(start_one, in_axes=(None, 0, 0))(params, keys, obs))

    def step_all(params, carry, action, obs, reward, done, final):
        carry = jax.vmap(take_in, in_axes=(0, 0, 0, 0, None, 0))(carry, action, obs, reward,
                                                                 done, final)
        return act(params, carry)

    return jax.jit(start_all), jax.jit(step_all)


def evaluate_host(trained: Any, env: Any, task_index: Any, cfg: EvalConfig, seed: int = 0,
                  cached_model: bool = True, workers: int | None = None,
                  stats: dict | None = None) -> Rollout:
    """``evaluate.evaluate_run`` for a host-stepped family: ``Rollout`` with a leading task
    axis (returns and per-episode success ``[N, E]``). ``stats`` (if given) receives the
    seconds spent in the jitted agent step (``model_s``, compile included in
    ``compile_s``) and in the envs (``env_s``), and ``env_steps``."""
    from dicp_jax.host.collect import default_workers

    task_index = np.asarray(task_index, np.int64)
    method = methods.get(trained.train_cfg.method)
    n_transit = trained.model_cfg.n_transit
    options = {} if cached_model else {"cached": False}
    factory = lambda p: method.make_agent(trained.model, p, trained.codec, n_transit, **options)
    start, step = make_host_steps(env, factory, trained.codec, cfg, n_transit)
    N, H = len(task_index), env.horizon
    n_steps = cfg.episodes * H
    keys = task_keys(jax.random.PRNGKey(seed), task_index)
    rewards = np.zeros((N, n_steps), np.float32)
    success = np.zeros((N, n_steps), bool)
    seen_obs, seen_act = [], []
    model_s = env_s = compile_s = 0.0
    workers = default_workers() if workers is None else int(workers)
    with env.batch(task_index, 1, workers) as envs:
        t0 = time.perf_counter()
        obs = env.model_obs(envs.reset())  # [N, D]
        env_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        carry, action = start(trained.params, keys, obs)
        action = np.asarray(action)
        compile_s += time.perf_counter() - t0
        for t in range(n_steps):
            t0 = time.perf_counter()
            full, reward, ok = envs.step(action)
            done = (t + 1) % H == 0
            final = env.model_obs(full)
            nxt = env.model_obs(envs.reset()) if done else final
            env_s += time.perf_counter() - t0
            rewards[:, t], success[:, t] = reward, ok > 0
            if cfg.trajectories:
                seen_obs.append(obs)
                seen_act.append(action)
            obs = nxt
            if t + 1 == n_steps:
                break
            t0 = time.perf_counter()
            carry, action = step(trained.params, carry, action, obs,
                                 reward.astype(np.float32), done, final)
            action = np.asarray(action)
            if t == 0:
                compile_s += time.perf_counter() - t0
            else:
                model_s += time.perf_counter() - t0
    if stats is not None:
        stats.update(model_s=model_s, env_s=env_s, compile_s=compile_s,
                     env_steps=N * n_steps, model_steps=n_steps)
    returns = rewards.reshape(N, cfg.episodes, H).sum(-1)
    ep_success = success.reshape(N, cfg.episodes, H).any(-1)
    if cfg.trajectories:
        return Rollout(returns, ep_success, np.stack(seen_obs, 1), np.stack(seen_act, 1),
                       rewards)
    return Rollout(returns, ep_success)


__all__ = ["evaluate_host", "make_host_steps"]
