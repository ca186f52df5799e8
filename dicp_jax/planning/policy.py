"""The planner that does not plan: act with the policy (imitation) head, as AD does.

The rollout already draws the policy's action at every real step (a sample, or the mode
with ``EvalConfig.greedy``), because it acts with it whenever a planner is not in charge;
this planner returns that action, so AD and DICP of one checkpoint share every random
draw up to the first planned step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from dicp_jax.planning.base import PlanConfig, PlanFn, Planner, Situation
from dicp_jax.planning.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class PolicyConfig(PlanConfig):
    """No settings: sampling or the mode is ``EvalConfig.greedy``, shared with the rollout."""


def make(wm: WorldModel, codec: Any, cfg: PolicyConfig) -> PlanFn:
    def plan(now: Situation, key: jax.Array) -> jax.Array:
        return now.policy_action

    return plan


PLANNER = Planner("policy", PolicyConfig, make,
                  "act from the imitation (policy) head: AD behaviour")

__all__ = ["PLANNER", "PolicyConfig", "make"]
