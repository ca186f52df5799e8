"""One of our jitted gymnax task envs as a Stable-Baselines3 ``VecEnv``.

The SB3 comparisons (``sb3_gaussian.py``, ``sb3_families.py``) step the *same* jitted env
our learner steps, so a difference between the learners is never a difference between two
implementations of the task: ``n`` copies of one task advance in one vmapped call per
vector step (SB3 pays for its learner, not for a slow env). SB3 sees the true last
observation of a time-limit step (``terminal_observation``) and bootstraps as ours.

Imports of gymnasium / stable-baselines3 happen inside :func:`make`: neither is a project
dependency (see the scripts' docstrings for installing them beside the project).
"""

from __future__ import annotations

from typing import Any


def make(env: Any, params: Any, n: int, seed: int) -> Any:
    """``n`` copies of the task ``params`` of ``env`` (a ``dicp_envs`` env), as a VecEnv.

    Box actions when the env has ``action_dim`` (continuous families), Discrete
    ``num_actions`` otherwise. ``episode_returns`` collects every finished episode's raw
    return per copy (``list[list[float]]``), in order."""
    import gymnasium as gym
    import jax
    import jax.numpy as jnp
    import numpy as np
    from stable_baselines3.common.vec_env import VecEnv

    continuous = hasattr(env, "action_dim")

    class JaxVecEnv(VecEnv):
        def __init__(self) -> None:
            space = gym.spaces.Box(-np.inf, np.inf, (int(env.obs_dim),), np.float32)
            action = (gym.spaces.Box(-1.0, 1.0, (int(env.action_dim),), np.float32)
                      if continuous else gym.spaces.Discrete(int(env.num_actions)))
            super().__init__(n, space, action)
            self._key = jax.random.PRNGKey(seed)
            self._reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
            self._step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
            self._state, self._actions = None, None
            self._running = np.zeros(n)
            self.episode_returns: list[list[float]] = [[] for _ in range(n)]

        def _keys(self):
            self._key, sub = jax.random.split(self._key)
            return jax.random.split(sub, n)

        def reset(self):
            obs, self._state = self._reset(self._keys(), params)
            self._running[:] = 0.0
            return np.asarray(obs, np.float32)

        def step_async(self, actions):
            self._actions = (jnp.asarray(actions, jnp.float32) if continuous
                             else jnp.asarray(np.asarray(actions).reshape(n), jnp.int32))

        def step_wait(self):
            obs, self._state, reward, term, trunc, info = self._step(
                self._keys(), self._state, self._actions, params)
            obs, reward = np.array(obs, np.float32), np.array(reward, np.float32)  # writable
            term, trunc = np.asarray(term), np.asarray(trunc)
            final = np.asarray(info["final_observation"], np.float32)
            done = term | trunc
            self._running += reward
            infos = [{} for _ in range(n)]
            for i in np.flatnonzero(done):
                infos[i] = {"terminal_observation": final[i],
                            "TimeLimit.truncated": bool(trunc[i] and not term[i])}
                self.episode_returns[i].append(float(self._running[i]))
                self._running[i] = 0.0
            return obs, reward, done, infos

        def close(self):
            pass

        def get_attr(self, name, indices=None):
            return [None] * n

        def set_attr(self, name, value, indices=None):
            pass

        def env_method(self, name, *args, indices=None, **kwargs):
            return [None] * n

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * n

        def seed(self, seed=None):
            return [None] * n

    return JaxVecEnv()


def ppo(venv: Any, cfg: Any, seed: int) -> Any:
    """SB3 ``PPO("MlpPolicy")`` with a source config's settings (ours and the paper's)."""
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.minibatch_size,
               n_epochs=cfg.n_epochs, learning_rate=cfg.lr, gamma=cfg.gamma,
               gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_eps, ent_coef=cfg.ent_coef,
               vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=seed, device="cpu",
               verbose=0)
