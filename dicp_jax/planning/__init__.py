"""Planners by name (see ``base`` for the signature): ``policy`` (AD), ``beam`` (the
paper's DICP planner) and ``sampled`` (its continuous-action form), plus the in-context
look-ups beyond the paper (``lookups``).

A new planner is a module with its config and ``make`` plus one ``register`` line here.
"""

from dicp_jax.planning import beam, policy, sampled
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
register(sampled.PLANNER)

__all__ = ["PREDICTED_REWARD", "PlanConfig", "PlanFn", "Planner", "Scorer", "Situation",
           "WorldModel", "cached", "get", "names", "register", "uncached",
           "unregister"]
