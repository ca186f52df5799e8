"""Darkroom-Permuted: fixed corner-to-corner goal, the task is a permutation of the actions.

The agent's action ``a`` acts as base action ``perm[a]``, where ``perm`` is the
``perm_idx``-th entry of ``itertools.permutations(range(5))`` (120 tasks).
"""

from __future__ import annotations

import itertools
from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dicp_envs.grid import NUM_ACTIONS, GridEnv, check_cell, move, toward

PERMUTATIONS = np.array(list(itertools.permutations(range(NUM_ACTIONS))), dtype=np.int32)


@struct.dataclass
class EnvState:
    pos: chex.Array  # int32[2]
    time: chex.Array  # int32[]


@struct.dataclass
class EnvParams:
    perm: chex.Array  # int32[5]: base action of each agent action


class DarkroomPermuted(GridEnv):
    """Start at (0, 0), goal at the far corner, horizon 50, task = action permutation."""

    # the position is the whole state and the reward depends only on where a step ends
    observation_is_state = True
    reward_of_arrival = True

    def __init__(
        self, grid_size: int = 9, horizon: int = 50, start: Any = (0, 0), goal: Any = None
    ):
        super().__init__(grid_size, horizon, start)
        goal = (self.grid_size - 1, self.grid_size - 1) if goal is None else goal
        check_cell("goal", goal, self.grid_size)
        self.goal = tuple(int(v) for v in goal)

    @property
    def default_params(self) -> EnvParams:
        return self.make_params(0)

    def make_params(self, perm_idx: int) -> EnvParams:
        return EnvParams(perm=jnp.asarray(PERMUTATIONS[_check_perm(perm_idx)]))

    def reset_env(self, key: chex.PRNGKey, params: EnvParams):
        state = EnvState(pos=self.start_pos(), time=jnp.int32(0))
        return state.pos, state

    def step_env(self, key: chex.PRNGKey, state: EnvState, action, params: EnvParams):
        action = jnp.clip(action, 0, NUM_ACTIONS - 1)
        pos = move(state.pos, params.perm[action], self.grid_size)
        reward = jnp.all(pos == jnp.asarray(self.goal)).astype(jnp.float32)
        state = EnvState(pos=pos, time=state.time + 1)
        return pos, state, reward, jnp.array(False), {}

    def state_from_obs(self, obs: chex.Array) -> EnvState:
        """The position is the whole state (time only ends episodes), so the outcome of any
        action from a recorded observation can be computed (counterfactual targets)."""
        return EnvState(pos=jnp.asarray(obs, jnp.int32), time=jnp.int32(0))

    def task_list(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(len(PERMUTATIONS))]

    def params_for(self, tasks: np.ndarray) -> EnvParams:
        idx = [_check_perm(i) for i in np.asarray(tasks).reshape(-1)]
        return EnvParams(perm=jnp.asarray(PERMUTATIONS[idx]))

    def optimal_return(self, params: EnvParams) -> chex.Array:
        dist = sum(abs(g - s) for g, s in zip(self.goal, self.start, strict=True))
        best = max(0, min(self.horizon, self.horizon + 1 - dist))
        return jnp.full(params.perm.shape[:-1], best, dtype=jnp.float32)

    def optimal_action(self, state: EnvState, params: EnvParams) -> chex.Array:
        base = toward(state.pos, jnp.asarray(self.goal, dtype=jnp.int32))
        return jnp.argmax(params.perm == base).astype(jnp.int32)


def _check_perm(perm_idx: Any) -> int:
    if isinstance(perm_idx, bool) or not float(perm_idx).is_integer():
        raise ValueError(f"perm_idx must be an integer, got {perm_idx!r}")
    i = int(perm_idx)
    if not 0 <= i < len(PERMUTATIONS):
        raise ValueError(f"perm_idx must be in [0, {len(PERMUTATIONS) - 1}], got {perm_idx}")
    return i
