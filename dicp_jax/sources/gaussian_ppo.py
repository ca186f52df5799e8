"""Source algorithm: Gaussian PPO for Box actions, with Stable-Baselines3 ``MlpPolicy`` semantics.

The continuous counterpart of ``ppo`` (the paper's Meta-World source is SB3 PPO on Box
actions), sharing its networks, initialisation, optimiser, GAE, clipped surrogate and
update loop; only the policy's distribution differs:

- ``DiagGaussianDistribution``: the policy MLP (64, 64, tanh) outputs the mean; the std is
  ``exp(log_std)``, one state-INDEPENDENT parameter per action dimension starting at
  ``log_std_init = 0`` and trained by the same Adam; no tanh squashing.
- The action is sampled from ``N(mean, std)`` and clipped to the action space's bounds ONLY
  on its way to the env. The rollout buffer, the behaviour log-prob and the loss keep the
  unclipped sample (SB3 ``collect_rollouts``), so the ratio compares densities of the action
  the policy actually drew, not of a clipped point that has no density.
- Loss: clipped surrogate + ``vf_coef * mse`` (no 0.5 factor, no value clipping) minus
  ``ent_coef * entropy`` (0 by default); the time-limit bootstrap ``r += gamma V(s'_true)``
  on truncation; no observation or reward normalisation.

What ``History.action`` holds (``record_action``): by default the UNCLIPPED sample, because
that is what the paper's data holds: DICP's ``HistoryLoggerCallback`` stores
``self.locals["actions"]``, which in SB3 2.3.2's ``collect_rollouts`` is the raw sample (the
env gets a separate ``clipped_actions``). The model therefore imitates the source's Gaussian
itself, and at meta-test its sampled actions are clipped by the env in the same way.
``record_action="clipped"`` records the action the env executed instead. Rewards are
recorded before the bootstrap is added (as the callback copies them), as in ``ppo``.

This module is the ``gaussian_ppo`` source (``dicp_jax.sources``): ``make_learner`` returns
``learn(key, env_params) -> History [S, T, ...]`` for ONE task, rollouts and updates scanned
inside it, so ``collect.py`` maps it over tasks and devices unchanged.

The env provides the gymnax API plus ``obs_dim``, ``action_dim`` and a ``spaces.Box``
``action_space(params)`` whose bounds may depend on the task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dicp_jax.config import ConfigError
from dicp_jax.sources import ppo
from dicp_jax.sources.base import History

Array = jax.Array
Params = dict[str, Any]

NAME = "gaussian_ppo"
DESCRIPTION = ("Gaussian PPO for Box actions (Stable-Baselines3 MlpPolicy semantics, "
               "dicp_jax.sources.gaussian_ppo)")

LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GaussianPPOConfig(ppo.PPOConfig):
    """One learner per task acting in ``n_streams`` parallel copies of that task: PPO's
    config (the same fields, sizes and checks) with the paper's Meta-World settings as
    defaults (Table 3: 100 streams, 1M steps per task, n_steps 100, batch 200, 20 epochs,
    lr 3e-4) and the Gaussian policy's own two fields."""

    steps_per_stream: int = 10_000  # total env steps = n_streams * steps_per_stream
    n_steps: int = 100  # rollout length per stream and update
    minibatch_size: int = 200  # SB3 batch_size
    log_std_init: float = 0.0
    record_action: Literal["sampled", "clipped"] = "sampled"  # what History.action holds

    def validate(self) -> None:
        super().validate()
        if self.record_action not in ("sampled", "clipped"):
            raise ConfigError(f"record_action must be 'sampled' or 'clipped', "
                              f"got {self.record_action!r}")
        if not math.isfinite(self.log_std_init):
            raise ConfigError(f"log_std_init must be finite, got {self.log_std_init}")


def paper_config(env_name: str, **overrides: Any) -> GaussianPPOConfig:
    """The paper's settings (the defaults), then this family's registration
    (``source_settings["gaussian_ppo"]``), then ``overrides``."""
    import dicp_envs

    family = dicp_envs.family(env_name)
    if NAME not in family.source_settings:
        raise ConfigError(f"no paper Gaussian PPO settings for {env_name!r}")
    cfg = GaussianPPOConfig(**{**family.source_settings[NAME], **overrides})
    cfg.validate()
    return cfg


Config = GaussianPPOConfig


# -- the policy --------------------------------------------------------------------------------
def init_params(key: Array, obs_dim: int, action_dim: int, cfg: GaussianPPOConfig) -> Params:
    """PPO's two orthogonally initialised MLPs (the policy one outputs the action mean) plus
    the state-independent ``log_std [action_dim]``."""
    params = ppo.init_params(key, obs_dim, action_dim, cfg)
    return {**params, "log_std": jnp.full((action_dim,), cfg.log_std_init, jnp.float32)}


def action_mean(params: Params, obs: Array) -> Array:
    """``obs [..., obs_dim]`` -> the Gaussian's mean ``[..., action_dim]``."""
    return ppo.policy_logits(params, obs)  # the same MLP; its head is the mean here


def log_prob(mean: Array, log_std: Array, action: Array) -> Array:
    """Diagonal-Gaussian log-density summed over the action dims: ``[..., A] -> [...]``."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * LOG_2PI, axis=-1)


def entropy(log_std: Array) -> Array:
    """Entropy of ``N(., exp(log_std))`` summed over dims (state-independent): ``[A] -> []``."""
    return jnp.sum(log_std + 0.5 * (1.0 + LOG_2PI), axis=-1)


def act(params: Params, obs: Array, key: Array, low: Array, high: Array
        ) -> tuple[Array, Array, Array]:
    """Sample for a batch ``obs [B, obs_dim]``: ``(sampled [B, A], clipped [B, A], logp [B])``.

    ``clipped`` goes to the env; ``sampled`` and its log-prob go to the rollout buffer."""
    mean = action_mean(params, obs)
    log_std = params["log_std"]
    sampled = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    return sampled, jnp.clip(sampled, low, high), log_prob(mean, log_std, sampled)


def action_bounds(env: Any, env_params: Any) -> tuple[Array, Array]:
    """The env's Box bounds as float32 ``[action_dim]`` arrays (a scalar bound broadcast)."""
    space = env.action_space(env_params)
    shape = (env.action_dim,)
    return (jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), shape),
            jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), shape))


def gaussian_loss(params: Params, mb: ppo.Batch, cfg: GaussianPPOConfig) -> Array:
    """SB3's PPO loss for the Gaussian policy on a minibatch of UNCLIPPED actions."""
    logp = log_prob(action_mean(params, mb.obs), params["log_std"], mb.action)
    loss = ppo.clipped_surrogate(logp, ppo.value(params, mb.obs), mb, cfg)
    if cfg.ent_coef:
        loss = loss - cfg.ent_coef * entropy(params["log_std"])
    return loss


# -- the learner -------------------------------------------------------------------------------
class Rollout(NamedTuple):
    """What one update learns from: ``n_steps`` steps of ``S`` streams, ``[n_steps, S, ...]``."""

    obs: Array  # [n_steps, S, obs_dim]: the policy's inputs
    sampled: Array  # [n_steps, S, A]: the UNCLIPPED sampled actions
    logp: Array  # [n_steps, S]: their behaviour log-probs
    value: Array  # [n_steps, S]: V(obs)
    reward: Array  # [n_steps, S]: rewards plus the time-limit bootstrap gamma V(s')
    done: Array  # [n_steps, S] bool: the episode ended with the step


def update(params: Params, opt_state: Any, traj: Rollout, last_obs: Array, key: Array,
           cfg: GaussianPPOConfig) -> tuple[Params, Any]:
    """One PPO update from a rollout (GAE from ``V(last_obs [S, obs_dim])``, then the epochs
    of minibatch steps): the step shared by the jitted learner and the host-stepped one
    (``dicp_jax.host.collect``), whose rollouts come from envs outside JAX."""
    adv, ret = ppo.gae(traj.reward, traj.value, traj.done, ppo.value(params, last_obs), cfg)
    flat = lambda x: x.reshape(cfg.batch_size, *x.shape[2:])
    batch = ppo.Batch(flat(traj.obs), flat(traj.sampled), flat(traj.logp), flat(adv), flat(ret))
    return ppo.update(params, opt_state, batch, key, cfg, loss_fn=gaussian_loss)


def make_learner(env: Any, cfg: GaussianPPOConfig, dtypes: dict[str, Any]
                 ) -> Callable[[Array, Any], History]:
    """``learn(key, env_params) -> History [S, T, ...]`` (``action [S, T, action_dim]``):
    one task's whole PPO run, recorded in the storage ``dtypes``. ``S = n_streams`` copies
    of the task are stepped in parallel; each update collects ``n_steps`` per stream."""
    cfg.validate()
    S, A = cfg.n_streams, env.action_dim
    opt = ppo.make_optimizer(cfg)
    step_streams = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    reset_streams = jax.vmap(env.reset, in_axes=(0, None))

    def rollout(params, obs, env_state, key, env_params):
        """``n_steps`` steps of ``S`` streams -> records [n_steps, S] and a training batch."""
        low, high = action_bounds(env, env_params)

        def env_step(c, k):
            obs, env_state = c
            k_act, k_env = jax.random.split(k)
            sampled, clipped, logp = act(params, obs, k_act, low, high)  # [S, A] [S, A] [S]
            chex.assert_shape((sampled, clipped), (S, A))
            v = ppo.value(params, obs)  # [S]
            nxt, env_state, reward, term, trunc, info = step_streams(
                jax.random.split(k_env, S), env_state, clipped, env_params)
            final = info["final_observation"]  # true s', also at an episode's end
            boot = jnp.where(trunc & ~term, cfg.gamma * ppo.value(params, final), 0.0)
            done = term | trunc
            recorded = clipped if cfg.record_action == "clipped" else sampled
            rec = History(obs.astype(dtypes["obs"]), recorded.astype(dtypes["action"]),
                          reward.astype(dtypes["reward"]), final.astype(dtypes["obs"]), done)
            return (nxt, env_state), (rec, (obs, sampled, logp, v, reward + boot, done))

        (obs, env_state), (rec, train) = jax.lax.scan(
            env_step, (obs, env_state), jax.random.split(key, cfg.n_steps))
        return rec, Rollout(*train), obs, env_state

    def learn(key: Array, env_params: Any) -> History:
        k_init, k_reset, k_run = jax.random.split(key, 3)
        params = init_params(k_init, env.obs_dim, A, cfg)
        obs, env_state = reset_streams(jax.random.split(k_reset, S), env_params)

        def one_update(carry, k):
            params, opt_state, obs, env_state = carry
            k_roll, k_upd = jax.random.split(k)
            rec, traj, obs, env_state = rollout(params, obs, env_state, k_roll, env_params)
            params, opt_state = update(params, opt_state, traj, obs, k_upd, cfg)
            return (params, opt_state, obs, env_state), rec

        carry = (params, opt.init(params), obs, env_state)
        _, rec = jax.lax.scan(one_update, carry, jax.random.split(k_run, cfg.n_updates))
        # [U, n_steps, S, ...] -> [S, U * n_steps = T, ...]
        return jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0).reshape(
            S, cfg.steps_per_stream, *x.shape[3:]), rec)

    return learn
