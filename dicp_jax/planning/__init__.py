"""Planners by name (see ``base`` for the signature): ``policy`` (AD) and ``beam`` (the
paper's DICP planner), plus the in-context look-ups beyond the paper (``lookups``).

A new planner is a module with its config and ``make`` plus one ``register`` line here.
"""

from dicp_jax.planning import beam, policy
from dicp_jax.planning.base import (
    PREDICTED_REWARD,
    PlanConfig,
    PlanFn,
    Planner,
    Scorer,
    Situation,
    get,
    names,
    register,
    unregister,
)
from dicp_jax.planning.world_model import WorldModel, cached, uncached

register(policy.PLANNER)
register(beam.PLANNER)

__all__ = ["PREDICTED_REWARD", "PlanConfig", "PlanFn", "Planner", "Scorer", "Situation",
           "WorldModel", "cached", "get", "names", "register", "uncached",
           "unregister"]
