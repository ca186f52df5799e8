"""Push: push a puck to an invisible goal (Meta-World's push-v3 on the arm of brax_arm).

Task = (goal xyz, puck start xy), drawn from push-v3's boxes with its rejection rule (goal
and puck at least 0.15 apart in the plane). The puck is an upright capsule (a puck with
rounded rims; MJX collides a sphere with it several times faster than with a cylinder) on two
damped slide joints (the damping stands in for table friction: a released puck stops within a few
centimetres); the hand's sphere pushes it through MuJoCo contacts.

Reward, in push-v3's shape with the finger-caging term replaced by a reach term, since
the puck is pushed, not grasped:

    near     = tolerance(||hand - puck||, bounds=(0, TOUCH), margin=||hand_init - puck_init||)
    in_place = tolerance(||puck - goal||, bounds=(0, 0.05), margin=||puck_init - goal||)
    reward   = 5 + 5 * in_place   if ||hand - puck|| <= TOUCH   (the hand at the puck)
               2 * near           otherwise
    reward   = 10                 if ||puck - goal|| < 0.05

(push-v3: ``2 g``, plus ``1 + 2 g + 5 in_place`` when the object is between the open
fingers, with g the caging reward; 10 within the target radius. Here the gripper plays no
part in the reward.) ``TOUCH`` is the contact distance of
hand and puck plus 1 cm. Every tolerance is long_tail with value 0.1 at the margin. Range
[0, 10]; success = ``||puck - goal|| <= 0.05``.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dicp_envs.brax_arm import (
    HAND_INIT,
    HAND_RADIUS,
    OBJ_Z,
    SUCCESS_RADIUS,
    ArmEnv,
    distance,
    hand_start_q,
    tolerance,
    uniform,
)

GOAL_LOW = (-0.1, 0.8, 0.01)  # push-v3's goal_low / goal_high
GOAL_HIGH = (0.1, 0.9, 0.02)
OBJ_LOW = (-0.1, 0.6)  # push-v3's obj_low / obj_high (x, y; z = OBJ_Z)
OBJ_HIGH = (0.1, 0.7)
MIN_GOAL_OBJ = 0.15  # push-v3 redraws until goal and puck are this far apart in the plane

PUCK_RADIUS = 0.02
PUCK_HALF_LENGTH = 0.01  # of the capsule's straight part: a vertical side from z 0.01 to 0.03
PUCK_MASS = 0.1
PUCK_DAMPING = 2.0  # N s/m: the puck's velocity decays at rate damping / mass
TOUCH = HAND_RADIUS + PUCK_RADIUS + 0.01

PUCK_MJCF = f"""
    <body name="puck" pos="0 0 {OBJ_Z}">
      <joint name="puck_x" type="slide" axis="1 0 0" damping="{PUCK_DAMPING}"/>
      <joint name="puck_y" type="slide" axis="0 1 0" damping="{PUCK_DAMPING}"/>
      <geom name="puck" type="capsule" size="{PUCK_RADIUS} {PUCK_HALF_LENGTH}"
            mass="{PUCK_MASS}"/>
    </body>"""


@struct.dataclass
class EnvParams:
    goal: chex.Array  # float32[3]
    obj_init: chex.Array  # float32[2]: the puck's start in the plane


def push_reward(hand: chex.Array, obj: chex.Array, goal: chex.Array, obj_init: chex.Array
                ) -> tuple[chex.Array, chex.Array]:
    """(reward in [0, 10], success) of hand [3] and puck [3] positions for a goal [3] and
    the puck's start [3] (the formula of the module docstring)."""
    hand_to_obj = distance(hand, obj)
    obj_to_goal = distance(obj, goal)
    near = tolerance(hand_to_obj, TOUCH, distance(jnp.asarray(HAND_INIT), obj_init))
    in_place = tolerance(obj_to_goal, SUCCESS_RADIUS, distance(obj_init, goal))
    reward = jnp.where(hand_to_obj <= TOUCH, 5.0 + 5.0 * in_place, 2.0 * near)
    reward = jnp.where(obj_to_goal < SUCCESS_RADIUS, 10.0, reward)
    return reward, obj_to_goal <= SUCCESS_RADIUS


def puck_start(params: EnvParams) -> chex.Array:
    """float32[3]: the puck's start in space."""
    return jnp.concatenate([params.obj_init, jnp.full((1,), OBJ_Z, jnp.float32)])


class Push(ArmEnv):
    """Task = (goal xyz, puck start xy); 1000 drawn tasks, 50 train / 50 test per split
    seed."""

    OBJECTS = PUCK_MJCF
    TASK_DIM = 5

    def initial_q(self, params: EnvParams) -> chex.Array:
        return jnp.concatenate([jnp.asarray(hand_start_q()), params.obj_init])  # [6]

    def object_pos(self, q: chex.Array, params: EnvParams) -> chex.Array:
        return jnp.concatenate([q[4:6], jnp.full((1,), OBJ_Z, q.dtype)])

    def reward(self, obs: chex.Array, params: EnvParams) -> tuple[chex.Array, chex.Array]:
        return push_reward(obs[:3], obs[4:7], params.goal, puck_start(params))

    @staticmethod
    def draw_block(rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` (goal xyz, puck xy) rows; a pair closer than ``MIN_GOAL_OBJ`` is redrawn."""
        rows: list[np.ndarray] = []
        while len(rows) < n:
            goal = uniform(rng, GOAL_LOW, GOAL_HIGH, 1)[0]
            obj = uniform(rng, OBJ_LOW, OBJ_HIGH, 1)[0]
            if np.linalg.norm(goal[:2] - obj) >= MIN_GOAL_OBJ:
                rows.append(np.concatenate([goal, obj]))
        return np.stack(rows)  # [n, 5]

    def params_for(self, tasks: Any) -> EnvParams:
        """Batched params for float[N, 5] tasks (goal xyz, puck xy)."""
        tasks = self.check_tasks(tasks)
        return EnvParams(goal=jnp.asarray(tasks[:, :3]), obj_init=jnp.asarray(tasks[:, 3:]))


__all__ = ["EnvParams", "Push", "push_reward"]
