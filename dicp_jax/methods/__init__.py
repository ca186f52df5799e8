"""Imitation methods by name (see ``base`` for what a method owns)."""

from dicp_jax.methods import ad
from dicp_jax.methods.base import get, names, register, unregister

register(ad)

__all__ = ["get", "names", "register", "unregister"]
