"""Source algorithms whose learning histories are distilled (see ``base`` for the protocol)."""

from dicp_jax.sources import gaussian_ppo, ppo
from dicp_jax.sources.base import for_config, get, names, register

register(ppo)
register(gaussian_ppo)

__all__ = ["for_config", "get", "names", "register"]
