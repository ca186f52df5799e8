"""Codecs by name (see ``base`` for the protocol); an env declares which one it uses."""

from dicp_jax.codecs.base import Codec, Part, config_type, for_env, for_name, names, register
from dicp_jax.codecs.continuous import ContinuousCodecConfig, continuous_codec
from dicp_jax.codecs.grid import GridCodecConfig, grid_codec

register("grid", grid_codec, GridCodecConfig)
register("continuous", continuous_codec, ContinuousCodecConfig)

__all__ = ["Codec", "Part", "config_type", "for_env", "for_name", "names", "register"]
