"""Darkroom: find an invisible goal cell; reward 1 on every step that ends on it."""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dicp_envs.grid import GridEnv, cells, check_cell, move, toward


@struct.dataclass
class EnvState:
    pos: chex.Array  # int32[2]
    time: chex.Array  # int32[]


@struct.dataclass
class EnvParams:
    goal: chex.Array  # int32[2]: the task


class Darkroom(GridEnv):
    """Start at the centre, horizon 20, task = goal cell (81 tasks on the 9x9 grid)."""

    # the position is the whole state and the reward depends only on where a step ends
    observation_is_state = True
    reward_of_arrival = True

    def __init__(self, grid_size: int = 9, horizon: int = 20, start: Any = None):
        super().__init__(grid_size, horizon, start)

    @property
    def default_params(self) -> EnvParams:
        g = self.grid_size - 1
        return self.make_params((g, g))

    def make_params(self, goal: Any) -> EnvParams:
        check_cell("goal", goal, self.grid_size)
        return EnvParams(goal=jnp.asarray(goal, dtype=jnp.int32))

    def reset_env(self, key: chex.PRNGKey, params: EnvParams):
        state = EnvState(pos=self.start_pos(), time=jnp.int32(0))
        return state.pos, state

    def step_env(self, key: chex.PRNGKey, state: EnvState, action, params: EnvParams):
        pos = move(state.pos, action, self.grid_size)
        reward = jnp.all(pos == params.goal).astype(jnp.float32)
        state = EnvState(pos=pos, time=state.time + 1)
        return pos, state, reward, jnp.array(False), {}

    def state_from_obs(self, obs: chex.Array) -> EnvState:
        """The position is the whole state (time only ends episodes), so the outcome of any
        action from a recorded observation can be computed (counterfactual targets)."""
        return EnvState(pos=jnp.asarray(obs, jnp.int32), time=jnp.int32(0))

    def task_list(self) -> list[tuple[int, ...]]:
        return cells(self.grid_size)

    def params_for(self, tasks: np.ndarray) -> EnvParams:
        tasks = np.asarray(tasks, dtype=np.int32).reshape(-1, 2)
        for t in tasks:
            check_cell("goal", t, self.grid_size)
        return EnvParams(goal=jnp.asarray(tasks))

    def optimal_return(self, params: EnvParams) -> chex.Array:
        # Reward on every step from arrival (step ``dist``, or 1 when goal == start) on.
        dist = jnp.abs(params.goal - self.start_pos()).sum(-1)
        best = jnp.minimum(self.horizon, self.horizon + 1 - dist)
        return jnp.maximum(best, 0).astype(jnp.float32)

    def optimal_action(self, state: EnvState, params: EnvParams) -> chex.Array:
        return toward(state.pos, params.goal)


__all__ = ["Darkroom", "EnvParams", "EnvState"]
