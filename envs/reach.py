"""Reach: move the hand to an invisible goal (Meta-World's reach-v3 on the arm of brax_arm).

Task = goal xyz, drawn from reach-v3's goal box. The object slots of the observation hold a
puck resting at Meta-World's ``obj_init_pos``; reach's reward ignores it, so it is not
simulated (no contacts: the cheapest of the arm families).

Reward (reach-v3): ``10 * tolerance(||hand - goal||, bounds=(0, 0.05),
margin=||hand_init - goal||, long_tail, value_at_margin=0.1)``, in [0, 10];
success = ``||hand - goal|| <= 0.05``.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dicp_envs.brax_arm import (
    HAND_INIT,
    OBJ_Z,
    SUCCESS_RADIUS,
    ArmEnv,
    distance,
    hand_start_q,
    tolerance,
    uniform,
)

GOAL_LOW = (-0.1, 0.8, 0.05)  # reach-v3's goal_low / goal_high
GOAL_HIGH = (0.1, 0.9, 0.3)
OBJ_POS = (0.0, 0.6, OBJ_Z)  # reach-v3's obj_init_pos


@struct.dataclass
class EnvParams:
    goal: chex.Array  # float32[3]: the task


def reach_reward(hand: chex.Array, goal: chex.Array) -> tuple[chex.Array, chex.Array]:
    """(reward in [0, 10], success) of a hand position [3] for a goal [3]."""
    dist = distance(hand, goal)
    margin = distance(jnp.asarray(HAND_INIT), goal)
    return 10.0 * tolerance(dist, SUCCESS_RADIUS, margin), dist <= SUCCESS_RADIUS


class Reach(ArmEnv):
    """Task = goal xyz; 1000 drawn tasks, 50 train / 50 test per split seed."""

    TASK_DIM = 3

    def initial_q(self, params: EnvParams) -> chex.Array:
        return jnp.asarray(hand_start_q())  # [4]: hand xyz, finger

    def object_pos(self, q: chex.Array, params: EnvParams) -> chex.Array:
        return jnp.asarray(OBJ_POS, jnp.float32)

    def reward(self, obs: chex.Array, params: EnvParams) -> tuple[chex.Array, chex.Array]:
        return reach_reward(obs[:3], params.goal)

    @staticmethod
    def draw_block(rng: np.random.Generator, n: int) -> np.ndarray:
        return uniform(rng, GOAL_LOW, GOAL_HIGH, n)  # [n, 3]

    def params_for(self, tasks: Any) -> EnvParams:
        """Batched params for float[N, 3] goals."""
        return EnvParams(goal=jnp.asarray(self.check_tasks(tasks)))


__all__ = ["EnvParams", "Reach", "reach_reward"]
