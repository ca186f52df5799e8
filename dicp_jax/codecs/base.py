"""Codecs: how an env's observations, rewards and actions enter the model and leave it.

A ``Codec`` has three *parts*, one per kind of token content. A part owns everything the
library does with its kind of value, so the model, training, validation, the meta-test and
the planners never assume integer observations or categorical actions:

- ``embed(x, width)``: the value as a ``[..., width]`` vector (creates its parameters; call
  it inside a Flax ``@nn.compact`` method, where they join the calling module);
- ``head_size``: the size of the model's output head that predicts it;
- ``loss(head, target)`` and ``correct(head, target)``: per-position training loss and a
  per-position hit for validation accuracies;
- ``mode(head)``: the most likely value (argmax class, or the mean of a density);
- ``sample(key, head)``: a draw from the predicted distribution.

A codec is chosen by the env's declared ``codec`` name (``dicp_envs.base.TaskEnv``) through
this registry; its options (a frozen dataclass per codec, e.g. the grid's factored
embedding) are recorded with every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax

from dicp_jax.config import Registry

Array = jax.Array


class Part(Protocol):
    head_size: int

    def embed(self, x: Array, width: int) -> Array: ...

    def loss(self, head: Array, target: Array) -> Array: ...

    def correct(self, head: Array, target: Array) -> Array: ...

    def mode(self, head: Array) -> Array: ...

    def sample(self, key: Array, head: Array) -> Array: ...


@dataclasses.dataclass(frozen=True)
class Codec:
    """Frozen and hashable: it is a static part of the model and of compiled programs."""

    obs: Any  # Part with ``dim`` (features per observation) and ``dtype`` (token storage)
    reward: Any  # Part
    action: Any  # Part with ``shape`` and ``dtype`` of one action (and ``n`` if discrete)
    rtg_scale: float  # return-to-go is regressed as rtg / rtg_scale

    @property
    def obs_dim(self) -> int:
        return self.obs.dim


CODECS = Registry("codec")
names = CODECS.names


def register(name: str, build: Callable[[Any, Any], Codec], config: type) -> None:
    """``build(env, cfg) -> Codec`` for envs declaring ``codec = name``; ``config`` is the
    frozen dataclass of its options (defaults = the library's choice)."""
    CODECS.register(name, (build, config))


def _entry(env: Any) -> tuple[Callable[[Any, Any], Codec], type]:
    return CODECS.get(env.codec)


def config_type(env: Any) -> type:
    """The options dataclass of the codec an env declares."""
    return _entry(env)[1]


def for_env(env: Any, cfg: Any = None) -> Codec:
    """The codec an env declares, built for it with options ``cfg`` (default options)."""
    build, config = _entry(env)
    return build(env, config() if cfg is None else cfg)


def for_name(env_name: str, cfg: Any = None) -> Codec:
    import dicp_envs

    return for_env(dicp_envs.make(env_name)[0], cfg)
