"""Shared machinery of the Darkroom family: a point agent on an ``n x n`` grid.

Every variant is a gymnax ``Environment`` whose *task* lives in ``EnvParams`` (a pytree of
arrays, so a batch of tasks is just a batch of params) while the grid size and horizon are
static attributes of the env object (they fix array shapes and scan lengths).

Actions: 0: x+1, 1: x-1, 2: y+1, 3: y-1, 4: stay. Positions are clipped to the grid.
Inside ``jit`` nothing can raise, so an out-of-range action is clipped into ``[0, 4]``
(negative -> 0, anything above 4 -> 4 = stay). Episodes end only by the horizon.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import environment, spaces

from dicp_envs.base import TaskEnv

NUM_ACTIONS = 5
STAY = 4
# Displacement of each base action: rows are actions, columns (dx, dy).
MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=np.int32)


def move(pos: chex.Array, base_action: chex.Array, grid_size: int) -> chex.Array:
    """Apply a base action to an ``int32[2]`` position and clip to the grid."""
    base_action = jnp.clip(base_action, 0, NUM_ACTIONS - 1)
    return jnp.clip(pos + jnp.asarray(MOVES)[base_action], 0, grid_size - 1)


def toward(pos: chex.Array, target: chex.Array) -> chex.Array:
    """Base action on a shortest path from ``pos`` to ``target`` (x first, then y; stay there)."""
    dx, dy = target[0] - pos[0], target[1] - pos[1]
    return jnp.select(
        [dx > 0, dx < 0, dy > 0, dy < 0],
        [0, 1, 2, 3],
        default=STAY,
    ).astype(jnp.int32)


def manhattan(a: Any, b: Any) -> int:
    return int(abs(int(a[0]) - int(b[0])) + abs(int(a[1]) - int(b[1])))


def check_cell(name: str, cell: Any, grid_size: int) -> None:
    """Host-side validation of a cell given at construction time."""
    cell = np.asarray(cell)
    if cell.shape != (2,):
        raise ValueError(f"{name} must be a pair [x, y], got shape {cell.shape}")
    if not np.all(np.mod(cell, 1) == 0):
        raise ValueError(f"{name} must have integer coordinates, got {cell.tolist()}")
    if not np.all((cell >= 0) & (cell < grid_size)):
        raise ValueError(f"{name} {cell.tolist()} lies outside the {grid_size}x{grid_size} grid")


def check_int(name: str, value: Any, minimum: int) -> int:
    """Host-side validation of a static integer argument (no silent truncation of 2.5)."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class GridEnv(TaskEnv, environment.Environment):
    """Base class: static grid size, horizon and start cell; subclasses add the task."""

    codec = "grid"
    has_oracle = True

    def storage_dtypes(self) -> dict[str, Any]:
        """Positions < 128 fit int8 and 0/1 rewards float16 exactly."""
        small = self.grid_size <= 127
        return {"obs": np.int8 if small else np.int32, "action": np.int8,
                "reward": np.float16 if small else np.float32, "done": np.bool_}

    def __init__(self, grid_size: int = 9, horizon: int = 20, start: Any = None):
        super().__init__()
        self.grid_size = check_int("grid_size", grid_size, minimum=2)
        self.horizon = check_int("horizon", horizon, minimum=1)
        start = (self.grid_size // 2, self.grid_size // 2) if start is None else start
        check_cell("start", start, self.grid_size)
        self.start = tuple(int(v) for v in start)

    # -- gymnax plumbing -------------------------------------------------------------------
    def is_truncated(self, state, params) -> chex.Array:
        return state.time >= self.horizon

    def observe(self, key, state, action, params) -> chex.Array:
        return state.pos

    def get_obs(self, state, params=None, key=None) -> chex.Array:
        return state.pos

    def is_terminated(self, state, params) -> chex.Array:
        return jnp.array(False)

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    @property
    def obs_dim(self) -> int:
        return 2

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0, self.grid_size - 1, (2,), jnp.int32)

    def start_pos(self) -> chex.Array:
        return jnp.asarray(self.start, dtype=jnp.int32)

    # -- task set (host side) ----------------------------------------------------------------
    def task_list(self) -> list[tuple[int, ...]]:
        """Every task of this env, in the paper's row-major enumeration order."""
        raise NotImplementedError

    def params_for(self, tasks: np.ndarray):
        """Batched ``EnvParams`` for an ``int[N, k]`` array of task tuples."""
        raise NotImplementedError

    def optimal_return(self, params) -> chex.Array:
        """Best achievable episode return of a task (jittable, vmappable)."""
        raise NotImplementedError

    def optimal_action(self, state, params) -> chex.Array:
        """An action on an optimal path from ``state`` (jittable, vmappable)."""
        raise NotImplementedError

    def recorded_state(self, obs: chex.Array, rewards_before: chex.Array):
        """The env state behind a recorded observation, given the rewards already collected
        in its episode (the position is the state unless an env needs more)."""
        return self.state_from_obs(obs)

    def state_from_obs(self, obs: chex.Array):
        raise NotImplementedError

    def recorded_optimal_actions(self, obs: chex.Array, reward: chex.Array, done: chex.Array,
                                 params) -> chex.Array:
        """The oracle's action at every recorded step of one stream (DPT's labels):
        ``obs [T, 2]``, ``reward [T]``, ``done [T]`` -> int32 ``[T]``. Each step's state is
        rebuilt from its observation and the rewards collected earlier in the same episode
        (Key-to-Door's key), as the paper's annotator does after collection."""
        chex.assert_rank(obs, 2)
        hit = (jnp.asarray(reward) > 0).astype(jnp.int32)  # [T]
        before = jnp.cumsum(hit) - hit  # rewards strictly before t in the stream
        starts = jnp.concatenate([jnp.ones((1,), bool), jnp.asarray(done, bool)[:-1]])
        base = jax.lax.cummax(jnp.where(starts, before, 0))  # ... before t's episode began
        states = jax.vmap(self.recorded_state)(jnp.asarray(obs, jnp.int32), before - base)
        return jax.vmap(self.optimal_action, (0, None))(states, params).astype(jnp.int32)


def cells(grid_size: int) -> list[tuple[int, int]]:
    """All cells ``(i, j)`` in row-major order."""
    return [(i, j) for i in range(grid_size) for j in range(grid_size)]
