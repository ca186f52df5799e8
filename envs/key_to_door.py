"""Dark Key-to-Door: reach an invisible key (reward 1), then an invisible door (reward 1).

Rewards are paid after the move: the first step that ends on the key pays 1 and picks the
key up; after that, the first step that ends on the door pays 1 ("stay" included). A step
never pays both, so when key == door the door reward comes on a later step (stay once).
Standing on the door without the key pays nothing. At most 2 per episode.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dicp_envs.grid import STAY, GridEnv, cells, check_cell, move, toward


@struct.dataclass
class EnvState:
    pos: chex.Array  # int32[2]
    time: chex.Array  # int32[]
    has_key: chex.Array  # bool[]
    opened: chex.Array  # bool[]: door reward already paid


@struct.dataclass
class EnvParams:
    key: chex.Array  # int32[2]
    door: chex.Array  # int32[2]


class DarkKeyToDoor(GridEnv):
    """Start at the centre, horizon 50, task = (key cell, door cell): 6561 tasks on 9x9."""

    def __init__(self, grid_size: int = 9, horizon: int = 50, start: Any = None):
        super().__init__(grid_size, horizon, start)

    @property
    def default_params(self) -> EnvParams:
        g = self.grid_size - 1
        return self.make_params((0, g), (g, 0))

    def make_params(self, key: Any, door: Any) -> EnvParams:
        check_cell("key", key, self.grid_size)
        check_cell("door", door, self.grid_size)
        return EnvParams(
            key=jnp.asarray(key, dtype=jnp.int32), door=jnp.asarray(door, dtype=jnp.int32)
        )

    def reset_env(self, key: chex.PRNGKey, params: EnvParams):
        state = EnvState(
            pos=self.start_pos(),
            time=jnp.int32(0),
            has_key=jnp.array(False),
            opened=jnp.array(False),
        )
        return state.pos, state

    def step_env(self, key: chex.PRNGKey, state: EnvState, action, params: EnvParams):
        pos = move(state.pos, action, self.grid_size)
        got_key = ~state.has_key & jnp.all(pos == params.key)
        opens = state.has_key & ~state.opened & jnp.all(pos == params.door)
        reward = (got_key | opens).astype(jnp.float32)
        state = EnvState(
            pos=pos,
            time=state.time + 1,
            has_key=state.has_key | got_key,
            opened=state.opened | opens,
        )
        return pos, state, reward, jnp.array(False), {}

    def task_list(self) -> list[tuple[int, ...]]:
        grid = cells(self.grid_size)
        return [(ki, kj, gi, gj) for ki, kj in grid for gi, gj in grid]

    def params_for(self, tasks: np.ndarray) -> EnvParams:
        tasks = np.asarray(tasks, dtype=np.int32).reshape(-1, 4)
        for t in tasks:
            check_cell("key", t[:2], self.grid_size)
            check_cell("door", t[2:], self.grid_size)
        return EnvParams(key=jnp.asarray(tasks[:, :2]), door=jnp.asarray(tasks[:, 2:]))

    def optimal_return(self, params: EnvParams) -> chex.Array:
        # Reaching a cell takes its Manhattan distance, or one "stay" when already there.
        start = self.start_pos()
        t_key = jnp.maximum(jnp.abs(params.key - start).sum(-1), 1)
        t_door = t_key + jnp.maximum(jnp.abs(params.door - params.key).sum(-1), 1)
        return ((t_key <= self.horizon).astype(jnp.float32)
                + (t_door <= self.horizon).astype(jnp.float32))

    def recorded_state(self, obs: chex.Array, rewards_before: chex.Array) -> EnvState:
        """The key is held once the episode has paid a reward (only the key pays first).
        The door counts as never opened, so a label stays goal-directed after it, as the
        paper's annotator does."""
        return EnvState(pos=jnp.asarray(obs, jnp.int32), time=jnp.int32(0),
                        has_key=rewards_before >= 1, opened=jnp.array(False))

    def optimal_action(self, state: EnvState, params: EnvParams) -> chex.Array:
        target = jnp.where(state.has_key, params.door, params.key)
        act = toward(state.pos, target)
        return jnp.where(state.opened, STAY, act).astype(jnp.int32)
