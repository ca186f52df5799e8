"""Per-environment codecs: how observations, rewards and actions enter and leave the model.

The Transformer never looks at an env directly. A codec decides (i) how an observation /
reward is embedded (class index -> ``nn.Embed`` or vector -> ``nn.Dense``) and (ii) what the
dynamics heads predict and how they are scored (classification for the grid family:
grid-cell index and reward value; a regression codec for continuous envs can be added later
without touching ``model.py`` or ``train.py``, which only call the methods below).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class GridCodec:
    """Grid family: obs = int [x, y] -> cell ``x * grid_size + y``; rewards from a small set."""

    grid_size: int
    n_actions: int
    reward_values: tuple[float, ...] = (0.0, 1.0)
    rtg_scale: float = 20.0  # return-to-go is regressed as rtg / rtg_scale (~horizon)
    obs_dim: int = 2

    # Static facts the model reads to size its embeddings / heads.
    discrete_obs = True
    discrete_reward = True
    discrete_action = True

    @property
    def n_obs_classes(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def n_reward_classes(self) -> int:
        return len(self.reward_values)

    # -- conversions (jittable, any leading shape) ---------------------------------------------
    def obs_to_class(self, obs: jax.Array) -> jax.Array:
        """[..., 2] -> int32 [...]."""
        obs = jnp.clip(jnp.asarray(obs).astype(jnp.int32), 0, self.grid_size - 1)
        return obs[..., 0] * self.grid_size + obs[..., 1]

    def class_to_obs(self, cls: jax.Array) -> jax.Array:
        """int [...] -> int32 [..., 2]."""
        cls = jnp.asarray(cls).astype(jnp.int32)
        return jnp.stack([cls // self.grid_size, cls % self.grid_size], axis=-1)

    def reward_to_class(self, reward: jax.Array) -> jax.Array:
        """float [...] -> int32 [...]: index of the nearest known reward value."""
        values = jnp.asarray(self.reward_values, jnp.float32)
        r = jnp.asarray(reward).astype(jnp.float32)[..., None]
        return jnp.argmin(jnp.abs(r - values), axis=-1).astype(jnp.int32)

    def class_to_reward(self, cls: jax.Array) -> jax.Array:
        return jnp.asarray(self.reward_values, jnp.float32)[jnp.asarray(cls)]

    # -- what the model embeds -------------------------------------------------------------
    def obs_input(self, obs: jax.Array) -> jax.Array:
        return self.obs_to_class(obs)

    @property
    def n_coord_values(self) -> int:
        return self.grid_size

    def coord_input(self, obs: jax.Array) -> jax.Array:
        """[..., 2] -> int32 [..., 2]: each coordinate as an index (factored embedding)."""
        return jnp.clip(jnp.asarray(obs).astype(jnp.int32), 0, self.grid_size - 1)

    def reward_input(self, reward: jax.Array) -> jax.Array:
        return self.reward_to_class(reward)

    # -- head sizes and scoring -------------------------------------------------------------
    @property
    def obs_head_size(self) -> int:
        return self.n_obs_classes

    @property
    def reward_head_size(self) -> int:
        return self.n_reward_classes

    def obs_loss(self, logits: jax.Array, obs: jax.Array) -> jax.Array:
        """Per-position loss [...] of obs logits [..., C] against true observations [..., 2]."""
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), self.obs_to_class(obs))

    def reward_loss(self, logits: jax.Array, reward: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), self.reward_to_class(reward))

    def obs_correct(self, logits: jax.Array, obs: jax.Array) -> jax.Array:
        return jnp.argmax(logits, -1) == self.obs_to_class(obs)

    def reward_correct(self, logits: jax.Array, reward: jax.Array) -> jax.Array:
        return jnp.argmax(logits, -1) == self.reward_to_class(reward)

    def predict_obs(self, logits: jax.Array) -> jax.Array:
        """Most likely next observation, [..., 2]."""
        return self.class_to_obs(jnp.argmax(logits, -1))

    def predict_reward(self, logits: jax.Array) -> jax.Array:
        return self.class_to_reward(jnp.argmax(logits, -1))


def codec_for(env: Any) -> GridCodec:
    """The codec of an env object (grid family: anything with ``grid_size``)."""
    if hasattr(env, "grid_size"):
        return GridCodec(grid_size=int(env.grid_size), n_actions=int(env.num_actions),
                         rtg_scale=float(env.horizon), obs_dim=int(env.obs_dim))
    raise NotImplementedError(f"no codec for {type(env).__name__} yet")


def codec_for_name(env_name: str, **env_kwargs: Any) -> GridCodec:
    import dicp_envs

    env, _ = dicp_envs.make(env_name, **env_kwargs)
    return codec_for(env)


__all__ = ["GridCodec", "codec_for", "codec_for_name"]
