"""Source algorithm: PPO in pure JAX with Stable-Baselines3 ``MlpPolicy`` semantics.

AD distils *how a learner improves*, so the learner must improve the way the paper's does
(SB3 PPO): separate actor and critic MLPs (64, 64, tanh), orthogonal init (sqrt(2) hidden,
0.01 policy head, 1 value head), one Adam (eps 1e-5, constant lr) over both nets with a
global grad-norm clip, GAE, advantages normalised per minibatch (torch ``std`` is the
unbiased one), unclipped value loss, ``n_epochs`` shuffled passes per rollout, raw
positions fed as floats, and truncation handled like SB3: ``r += gamma * V(s'_true)``.

This module is the ``ppo`` source (``dicp_jax.sources``). Everything here is a function of
ONE task: ``make_learner`` returns the whole learner,
``learn(key, env_params) -> History [S, T]``, rollouts and updates scanned inside it
(PureJaxRL style); ``collect.py`` maps it over a chunk of tasks in one jitted call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dicp_jax.config import ConfigError
from dicp_jax.sources.base import History

Array = jax.Array
Params = dict[str, Any]

NAME = "ppo"
DESCRIPTION = "PPO (Stable-Baselines3 MlpPolicy semantics, dicp_jax.sources.ppo)"


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """One learner per task acting in ``n_streams`` parallel copies of that task."""

    n_streams: int = 100  # SB3 n_envs
    steps_per_stream: int = 1000  # total env steps = n_streams * steps_per_stream
    n_steps: int = 20  # rollout length per stream and update
    minibatch_size: int = 50  # SB3 batch_size
    n_epochs: int = 20
    lr: float = 3e-4
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    normalize_advantage: bool = True
    seed: int = 0

    @property
    def n_updates(self) -> int:
        return self.steps_per_stream // self.n_steps

    @property
    def batch_size(self) -> int:  # transitions per rollout
        return self.n_steps * self.n_streams

    @property
    def n_minibatches(self) -> int:
        return self.batch_size // self.minibatch_size

    def validate(self) -> None:
        for k in ("n_streams", "steps_per_stream", "n_steps", "minibatch_size", "n_epochs"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive layer sizes, got {self.hidden}")
        if self.lr <= 0 or self.adam_eps <= 0 or self.max_grad_norm <= 0 or self.clip_eps <= 0:
            raise ConfigError("lr, adam_eps, max_grad_norm and clip_eps must be > 0")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
            raise ConfigError("gamma and gae_lambda must be in [0, 1]")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ConfigError("vf_coef and ent_coef must be >= 0")
        if self.steps_per_stream % self.n_steps:
            raise ConfigError(f"steps_per_stream={self.steps_per_stream} must be a multiple "
                              f"of n_steps={self.n_steps}")
        if self.batch_size % self.minibatch_size:
            raise ConfigError(f"n_steps*n_streams={self.batch_size} must be a multiple of "
                              f"minibatch_size={self.minibatch_size}")


def paper_config(env_name: str, **overrides: Any) -> PPOConfig:
    """SB3's defaults with the paper's settings for this family (its registration's
    ``source_settings["ppo"]``), then ``overrides``."""
    import dicp_envs

    family = dicp_envs.family(env_name)
    if "ppo" not in family.source_settings:
        raise ConfigError(f"no paper PPO settings for {env_name!r}")
    cfg = PPOConfig(**{**family.source_settings["ppo"], **overrides})
    cfg.validate()
    return cfg


Config = PPOConfig


# -- the learner -------------------------------------------------------------------------------
def make_learner(env: Any, cfg: PPOConfig, dtypes: dict[str, Any]
                 ) -> Callable[[Array, Any], History]:
    """``learn(key, env_params) -> History [S, T, ...]``: one task's whole PPO run, every
    transition recorded in ``dtypes`` (compact storage dtypes, cast inside the scan so the
    record is small while it is built). ``S = n_streams`` copies of the task are stepped in
    parallel; each update collects ``n_steps`` steps per stream, then runs ``update``."""
    cfg.validate()
    S = cfg.n_streams
    opt = make_optimizer(cfg)
    step_streams = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    reset_streams = jax.vmap(env.reset, in_axes=(0, None))

    def rollout(params, obs, env_state, key, env_params):
        """``n_steps`` steps of ``S`` streams -> records [n_steps, S] and a training batch."""

        def env_step(c, k):
            obs, env_state = c
            k_act, k_env = jax.random.split(k)
            logits = policy_logits(params, obs)  # [S, A]
            v = value(params, obs)  # [S]
            action = jax.random.categorical(k_act, logits)  # [S]
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            nxt, env_state, reward, term, trunc, info = step_streams(
                jax.random.split(k_env, S), env_state, action, env_params)
            final = info["final_observation"]  # true s', also at an episode's end
            boot = jnp.where(trunc & ~term, cfg.gamma * value(params, final), 0.0)
            done = term | trunc
            rec = History(obs.astype(dtypes["obs"]), action.astype(dtypes["action"]),
                          reward.astype(dtypes["reward"]), final.astype(dtypes["obs"]), done)
            return (nxt, env_state), (rec, (obs, action, logp, v, reward + boot, done))

        (obs, env_state), (rec, train) = jax.lax.scan(
            env_step, (obs, env_state), jax.random.split(key, cfg.n_steps))
        t_obs, t_act, t_logp, t_val, t_rew, t_done = train  # [n_steps, S, ...]
        adv, ret = gae(t_rew, t_val, t_done, value(params, obs), cfg)
        flat = lambda x: x.reshape(cfg.batch_size, *x.shape[2:])
        batch = Batch(flat(t_obs), flat(t_act), flat(t_logp), flat(adv), flat(ret))
        return rec, batch, obs, env_state

    def learn(key: Array, env_params: Any) -> History:
        k_init, k_reset, k_run = jax.random.split(key, 3)
        params = init_params(k_init, env.obs_dim, env.num_actions, cfg)
        obs, env_state = reset_streams(jax.random.split(k_reset, S), env_params)

        def one_update(carry, k):
            params, opt_state, obs, env_state = carry
            k_roll, k_upd = jax.random.split(k)
            rec, batch, obs, env_state = rollout(params, obs, env_state, k_roll, env_params)
            params, opt_state = update(params, opt_state, batch, k_upd, cfg)
            return (params, opt_state, obs, env_state), rec

        carry = (params, opt.init(params), obs, env_state)
        _, rec = jax.lax.scan(one_update, carry, jax.random.split(k_run, cfg.n_updates))
        # [U, n_steps, S, ...] -> [S, U * n_steps = T, ...]
        return jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0).reshape(
            S, cfg.steps_per_stream, *x.shape[3:]), rec)

    return learn


# -- networks --------------------------------------------------------------------------------
def orthogonal(key: Array, shape: tuple[int, int], gain: float) -> Array:
    """``jax.nn.initializers.orthogonal(gain)`` without LAPACK: same normal draw, same Q.

    Why not the library initializer: its QR is a LAPACK custom call that parallelises its
    batch on XLA CPU's intra-op pool and blocks a pool thread until the pieces finish. Inside
    the collection program (QRs of many layers and tasks at once) every pool thread could end
    up blocked that way, waiting on work queued behind itself: a permanent deadlock, caught
    in native stacks (``jax::ParallelBatchMap`` under ``lapack_sgeqrf_ffi`` on both threads
    of a 2-core box). Classical Gram-Schmidt applied twice is orthogonal to float32 rounding
    and gives the unique Q whose R has a positive diagonal, i.e. the initializer's Q."""
    n_rows, n_cols = shape
    transpose = n_rows < n_cols
    a = jax.random.normal(key, (n_cols, n_rows) if transpose else shape, jnp.float32)
    m = a.shape[1]

    def column(j, q):  # q [n, m]: columns < j done, the rest zero
        v = a[:, j]
        for _ in range(2):  # "twice is enough" (Kahan / Parlett)
            v = v - q @ (q.T @ v)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, m, column, jnp.zeros_like(a))
    return gain * (q.T if transpose else q)


def _mlp_init(key: Array, sizes: list[int], out_gain: float) -> list[tuple[Array, Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        gain = out_gain if i == len(sizes) - 2 else np.sqrt(2.0)
        w = orthogonal(k, (n_in, n_out), gain)
        layers.append((w, jnp.zeros((n_out,), jnp.float32)))
    return layers


def init_params(key: Array, obs_dim: int, n_actions: int, cfg: PPOConfig) -> Params:
    k_pi, k_vf = jax.random.split(key)
    hid = list(cfg.hidden)
    return {
        "pi": _mlp_init(k_pi, [obs_dim, *hid, n_actions], 0.01),
        "vf": _mlp_init(k_vf, [obs_dim, *hid, 1], 1.0),
    }


def _mlp(layers: list[tuple[Array, Array]], x: Array) -> Array:
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def policy_logits(params: Params, obs: Array) -> Array:
    """``obs [..., obs_dim]`` (any int/float dtype) -> logits ``[..., n_actions]``."""
    return _mlp(params["pi"], obs.astype(jnp.float32))


def value(params: Params, obs: Array) -> Array:
    """``obs [..., obs_dim]`` -> ``V(obs) [...]``."""
    return _mlp(params["vf"], obs.astype(jnp.float32))[..., 0]


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    # torch clip_grad_norm_ over all params, then Adam; eps outside the sqrt like torch.
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                       optax.adam(cfg.lr, eps=cfg.adam_eps))


# -- advantage and loss ----------------------------------------------------------------------
class Batch(NamedTuple):
    obs: Array  # [B, obs_dim]
    action: Array  # [B] int32 (discrete) or [B, action_dim] float32 (Gaussian)
    logp: Array  # [B] behaviour log-prob
    adv: Array  # [B] GAE advantage
    ret: Array  # [B] value target = adv + V_old


def gae(reward: Array, val: Array, done: Array, last_val: Array, cfg: PPOConfig):
    """SB3 ``compute_returns_and_advantage``; inputs ``[T, S]`` (reward already bootstrapped
    on truncation), ``done[t]`` = the episode ended at step t. Returns ``(adv, ret)``."""
    next_val = jnp.concatenate([val[1:], last_val[None]], axis=0)
    nonterm = 1.0 - done.astype(jnp.float32)
    delta = reward + cfg.gamma * next_val * nonterm - val

    def back(acc, x):
        d, nt = x
        acc = d + cfg.gamma * cfg.gae_lambda * nt * acc
        return acc, acc

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_val), (delta, nonterm), reverse=True)
    return adv, adv + val


def clipped_surrogate(logp: Array, val: Array, mb: Batch, cfg: Any) -> Array:
    """SB3's PPO loss without the entropy term, from the new policy's ``logp [B]`` of the
    batch actions and the new ``V(obs) [B]``: any policy family shares it (``cfg`` is any
    config with PPO's fields)."""
    adv = mb.adv
    if cfg.normalize_advantage and cfg.minibatch_size > 1:
        adv = (adv - adv.mean()) / (jnp.std(adv, ddof=1) + 1e-8)
    ratio = jnp.exp(logp - mb.logp)
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
    pg_loss = -jnp.minimum(adv * ratio, adv * clipped).mean()
    v_loss = jnp.mean((mb.ret - val) ** 2)
    return pg_loss + cfg.vf_coef * v_loss


def ppo_loss(params: Params, mb: Batch, cfg: PPOConfig) -> Array:
    logits = policy_logits(params, mb.obs)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, mb.action[:, None], axis=-1)[:, 0]
    loss = clipped_surrogate(logp, value(params, mb.obs), mb, cfg)
    if cfg.ent_coef:
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        loss = loss - cfg.ent_coef * entropy
    return loss


def update(params: Params, opt_state: Any, batch: Batch, key: Array, cfg: PPOConfig,
           loss_fn: Callable[[Params, Batch, Any], Array] = ppo_loss):
    """``n_epochs`` shuffled passes of minibatch SGD on ``loss_fn`` over one rollout (one
    flat scan); another policy family passes its own loss."""
    opt = make_optimizer(cfg)
    perms = jax.vmap(lambda k: jax.random.permutation(k, cfg.batch_size))(
        jax.random.split(key, cfg.n_epochs))  # [E, B]
    idx = perms.reshape(cfg.n_epochs * cfg.n_minibatches, cfg.minibatch_size)

    def step(carry, mb_idx):
        params, opt_state = carry
        mb = jax.tree.map(lambda x: x[mb_idx], batch)
        grads = jax.grad(loss_fn)(params, mb, cfg)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state
