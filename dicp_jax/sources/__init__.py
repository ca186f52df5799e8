"""Source algorithms whose learning histories are distilled (see ``base`` for the protocol)."""

from dicp_jax.sources import ppo
from dicp_jax.sources.base import for_config, get, names, register

register(ppo)

__all__ = ["for_config", "get", "names", "register"]
