"""Imitation methods by name (see ``base`` for what a method owns)."""

from dicp_jax.methods import ad, dpt, idt
from dicp_jax.methods.base import get, names, register, unregister

register(ad)
register(dpt)
register(idt)

__all__ = ["get", "names", "register", "unregister"]
