"""The continuous codec: float observation vectors, real rewards, Gaussian actions.

For task families like Meta-World's ML1 (``codec = "continuous"``; the env declares
``obs_dim``, ``action_dim`` and ``horizon``). Each part follows what the paper's Meta-World
code does, so a model trained here has the heads its planner expects:

- observation: a ``float32[dim]`` vector, embedded by a Linear map; the next observation is
  regressed with a squared error (the paper's code: MSE, and only when ``learn_transition``,
  which its shipped config turns off: ``predict_next_obs=False`` here). A plain regression
  rather than a density: nothing samples imagined observations, a planner takes the mean.
- reward: a real number regressed as the paper's code does, squared error of
  ``clip(pred, low, high)`` against ``r`` (clipping inside the loss cuts the gradient of a
  prediction outside the bounds, which is the code's behaviour); ``mode`` is the clipped
  prediction. Embedded by a Linear map of the raw value (the code never rescales rewards).
- action: a diagonal Gaussian whose head holds mean and log-variance
  (``GaussianNLLLoss(full=True)`` as in torch, variance floored at ``VAR_EPS``); ``mode`` is
  the mean and ``sample`` draws ``mean + exp(logvar / 2) * eps``, unclipped (the env clips,
  as in the paper's evaluation). Embedded by a Linear map.

Validation accuracy (``correct``) of a real value is "within ``tolerance`` of the target in
every coordinate": a hit rate that reads like the grid's accuracies, at a scale chosen per
part in ``ContinuousCodecConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dicp_jax.codecs.base import Codec

Array = jax.Array
VAR_EPS = 1e-6  # torch GaussianNLLLoss's default variance floor


def within(pred: Array, target: Array, tolerance: float) -> Array:
    """bool [...]: every coordinate of ``pred [..., d]`` within ``tolerance`` of ``target``."""
    return jnp.all(jnp.abs(pred - target) <= tolerance, axis=-1)


@dataclasses.dataclass(frozen=True)
class VectorObs:
    """A ``float32[dim]`` observation. ``predicted=False`` says the next observation is not a
    training target (its head exists but nothing trains or reads it)."""

    dim: int
    predicted: bool = True
    tolerance: float = 0.05
    dtype: Any = jnp.float32

    @property
    def head_size(self) -> int:
        return self.dim

    def embed(self, obs: Array, width: int) -> Array:
        return nn.Dense(width, name="obs_embed")(jnp.asarray(obs, jnp.float32))

    def loss(self, head: Array, target: Array) -> Array:
        """Squared error averaged over coordinates: [..., dim] -> [...]."""
        return jnp.mean(jnp.square(head.astype(jnp.float32) - target), axis=-1)

    def correct(self, head: Array, target: Array) -> Array:
        return within(self.mode(head), target, self.tolerance)

    def mode(self, head: Array) -> Array:
        return head.astype(jnp.float32)

    def sample(self, key: Array, head: Array) -> Array:
        """A regression has no spread to draw from: the prediction itself."""
        return self.mode(head)


@dataclasses.dataclass(frozen=True)
class ClippedReward:
    """A real reward in ``[low, high]``, regressed through a clip (the paper's code)."""

    low: float = 0.0
    high: float = 10.0
    tolerance: float = 0.5

    @property
    def head_size(self) -> int:
        return 1

    def embed(self, reward: Array, width: int) -> Array:
        r = jnp.asarray(reward, jnp.float32)[..., None]  # [..., 1]
        return nn.Dense(width, name="reward_embed")(r)

    def mode(self, head: Array) -> Array:
        """[..., 1] -> [...]: the clipped prediction."""
        return jnp.clip(head[..., 0].astype(jnp.float32), self.low, self.high)

    def loss(self, head: Array, target: Array) -> Array:
        return jnp.square(self.mode(head) - jnp.asarray(target, jnp.float32))

    def correct(self, head: Array, target: Array) -> Array:
        return within(self.mode(head)[..., None], jnp.asarray(target, jnp.float32)[..., None],
                      self.tolerance)

    def sample(self, key: Array, head: Array) -> Array:
        """A regression has no spread to draw from: the prediction itself."""
        return self.mode(head)


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """A ``float32[dim]`` action from a diagonal Gaussian; the head is ``[mean, logvar]``."""

    dim: int
    tolerance: float = 0.1
    dtype: Any = jnp.float32

    @property
    def shape(self) -> tuple[int, ...]:  # of one action
        return (self.dim,)

    @property
    def head_size(self) -> int:
        return 2 * self.dim

    def split(self, head: Array) -> tuple[Array, Array]:
        """[..., 2 dim] -> (mean [..., dim], logvar [..., dim])."""
        head = head.astype(jnp.float32)
        return head[..., :self.dim], head[..., self.dim:]

    def embed(self, action: Array, width: int) -> Array:
        return nn.Dense(width, name="action_embed")(jnp.asarray(action, jnp.float32))

    def loss(self, head: Array, action: Array) -> Array:
        """Gaussian negative log-likelihood with its constant (torch ``full=True``), averaged
        over coordinates: [..., 2 dim] -> [...]. The variance floor is applied to the value
        only, the gradient passing through as torch's in-place clamp does."""
        mean, logvar = self.split(head)
        var = jnp.exp(logvar)
        var = var + jax.lax.stop_gradient(jnp.maximum(var, VAR_EPS) - var)
        nll = 0.5 * (jnp.log(var) + jnp.square(mean - action) / var + math.log(2 * math.pi))
        return nll.mean(-1)

    def correct(self, head: Array, action: Array) -> Array:
        return within(self.mode(head), action, self.tolerance)

    def mode(self, head: Array) -> Array:
        return self.split(head)[0]

    def sample(self, key: Array, head: Array) -> Array:
        mean, logvar = self.split(head)
        return mean + jnp.exp(logvar / 2) * jax.random.normal(key, mean.shape)


@dataclasses.dataclass(frozen=True)
class ContinuousCodecConfig:
    """Options of the continuous codec. Defaults: Meta-World's scales (rewards in [0, 10],
    success radius 0.05 in the observation's units, actions in [-1, 1])."""

    predict_next_obs: bool = True  # the paper's shipped config: False (reward only)
    reward_low: float = 0.0
    reward_high: float = 10.0
    # validation hit radii (``correct``), per coordinate
    obs_tolerance: float = 0.05
    reward_tolerance: float = 0.5
    action_tolerance: float = 0.1

    def validate(self) -> None:
        from dicp_jax.config import ConfigError

        if not self.reward_low < self.reward_high:
            raise ConfigError(f"reward_low ({self.reward_low}) must be < reward_high "
                              f"({self.reward_high})")
        for k in ("obs_tolerance", "reward_tolerance", "action_tolerance"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be > 0, got {getattr(self, k)}")


def continuous_codec(env: Any, cfg: ContinuousCodecConfig) -> Codec:
    """The codec of a continuous env (``codec = "continuous"``).

    Return-to-go is regressed in units of the largest possible return (``reward_high *
    horizon``; 1000 for Meta-World's 100-step episodes), so its target lies in [0, 1] as the
    grid's does in units of the horizon."""
    cfg.validate()
    scale = max(abs(cfg.reward_high), abs(cfg.reward_low)) * float(env.horizon)
    return Codec(obs=VectorObs(int(env.obs_dim), cfg.predict_next_obs, cfg.obs_tolerance),
                 reward=ClippedReward(cfg.reward_low, cfg.reward_high, cfg.reward_tolerance),
                 action=Gaussian(int(env.action_dim), cfg.action_tolerance),
                 rtg_scale=scale)


__all__ = ["VAR_EPS", "ClippedReward", "ContinuousCodecConfig", "Gaussian", "VectorObs",
           "continuous_codec", "within"]
