"""The grid codec: integer cell observations, rewards from a small set, categorical actions.

Everything here is a classification: an observation ``[x, y]`` is the class of its cell, a
reward the index of its value, an action its index. The embedding choices that only make
sense on a grid live here: ``factored`` observations (a vector per coordinate value,
summed: held-out goal cells are never rewarded in training, but each of their coordinate
values is, so the in-context reward lookup transfers) and ``mix`` (an MLP of the joint
coordinate vectors added to the sum, which can represent a cell as a conjunction where the
additive sum matched cells sharing one coordinate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dicp_jax.codecs.base import Codec

Array = jax.Array


class Classified:
    """A part whose values are classes: the head holds logits, and the loss, accuracy, mode
    and samples all go through the part's ``to_class`` / ``from_class``."""

    def loss(self, head: Array, value: Array) -> Array:
        return optax.softmax_cross_entropy_with_integer_labels(head.astype(jnp.float32),
                                                               self.to_class(value))

    def correct(self, head: Array, value: Array) -> Array:
        return jnp.argmax(head, -1) == self.to_class(value)

    def mode(self, head: Array) -> Array:
        return self.from_class(jnp.argmax(head, -1))

    def sample(self, key: Array, head: Array) -> Array:
        return self.from_class(jax.random.categorical(key, head))

    def confidence(self, head: Array) -> Array:
        """The top class's probability (adaptive planning's gate)."""
        return jax.nn.softmax(head.astype(jnp.float32), -1).max(-1)


@dataclasses.dataclass(frozen=True)
class GridObs(Classified):
    """An ``int[dim]`` cell of a ``grid_size``-wide grid, classified among all cells."""

    grid_size: int
    dim: int = 2
    factored: bool = True
    mix: bool = False
    dtype: Any = jnp.int32

    @property
    def head_size(self) -> int:
        return self.grid_size ** self.dim

    def clip(self, obs: Array) -> Array:
        return jnp.clip(jnp.asarray(obs).astype(jnp.int32), 0, self.grid_size - 1)

    def to_class(self, obs: Array) -> Array:
        """[..., dim] -> int32 [...] (row-major cell index)."""
        weights = self.grid_size ** jnp.arange(self.dim - 1, -1, -1, dtype=jnp.int32)
        return (self.clip(obs) * weights).sum(-1)

    def from_class(self, cls: Array) -> Array:
        """int [...] -> int32 [..., dim]."""
        cls = jnp.asarray(cls).astype(jnp.int32)
        weights = self.grid_size ** jnp.arange(self.dim - 1, -1, -1, dtype=jnp.int32)
        return (cls[..., None] // weights) % self.grid_size

    def embed(self, obs: Array, width: int) -> Array:
        if not self.factored:
            return nn.Embed(self.head_size, width, name="obs_embed")(self.to_class(obs))
        offsets = jnp.arange(self.dim, dtype=jnp.int32) * self.grid_size
        table = nn.Embed(self.dim * self.grid_size, width, name="obs_embed")
        coords = table(self.clip(obs) + offsets)  # [..., dim, width]
        if not self.mix:
            return coords.sum(-2)
        joint = coords.reshape(*coords.shape[:-2], -1)  # [..., dim * width]
        mixed = nn.Dense(width, name="obs_mix_out")(
            nn.gelu(nn.Dense(width, name="obs_mix_in")(joint)))
        return coords.sum(-2) + mixed


@dataclasses.dataclass(frozen=True)
class ClassReward(Classified):
    """A reward from a known finite set of values, classified (nearest value)."""

    values: tuple[float, ...] = (0.0, 1.0)

    @property
    def head_size(self) -> int:
        return len(self.values)

    def to_class(self, reward: Array) -> Array:
        values = jnp.asarray(self.values, jnp.float32)
        r = jnp.asarray(reward).astype(jnp.float32)[..., None]
        return jnp.argmin(jnp.abs(r - values), axis=-1).astype(jnp.int32)

    def from_class(self, cls: Array) -> Array:
        return jnp.asarray(self.values, jnp.float32)[jnp.asarray(cls)]

    def embed(self, reward: Array, width: int) -> Array:
        return nn.Embed(self.head_size, width, name="reward_embed")(self.to_class(reward))

    def expected(self, head: Array) -> Array:
        """The mean reward under the predicted class probabilities."""
        return jax.nn.softmax(head.astype(jnp.float32)) @ jnp.asarray(self.values, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Categorical(Classified):
    """One of ``n`` discrete actions; the head holds logits."""

    n: int
    shape: tuple[int, ...] = ()  # of one action
    dtype: Any = jnp.int32

    @property
    def head_size(self) -> int:
        return self.n

    def to_class(self, action: Array) -> Array:
        return jnp.clip(jnp.asarray(action).astype(jnp.int32), 0, self.n - 1)

    def from_class(self, cls: Array) -> Array:
        return jnp.asarray(cls).astype(jnp.int32)

    def embed(self, action: Array, width: int) -> Array:
        return nn.Embed(self.n, width, name="action_embed")(self.to_class(action))



@dataclasses.dataclass(frozen=True)
class GridCodecConfig:
    """Options of the grid codec (see the module docstring for why each exists)."""

    factored_obs: bool = True
    obs_mix: bool = False

    def validate(self) -> None:
        from dicp_jax.config import ConfigError

        if self.obs_mix and not self.factored_obs:
            raise ConfigError("obs_mix mixes coordinate vectors: it needs factored_obs=True")


def grid_codec(env: Any, cfg: GridCodecConfig) -> Codec:
    """The codec of a grid env (``codec = "grid"``): its size, actions and horizon."""
    cfg.validate()
    return Codec(obs=GridObs(int(env.grid_size), int(env.obs_dim), cfg.factored_obs,
                             cfg.obs_mix),
                 reward=ClassReward(), action=Categorical(int(env.num_actions)),
                 rtg_scale=float(env.horizon))


__all__ = ["Categorical", "ClassReward", "GridCodecConfig", "GridObs", "grid_codec"]
