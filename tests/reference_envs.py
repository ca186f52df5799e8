"""Plain-Python references of the Darkroom family, written from the issue text (no jax).

Each reference keeps its own state and auto-resets like gymnax: ``step`` returns
``(obs, reward, done, final_obs)`` where ``final_obs`` is the true s' and ``obs`` is the
reset observation when the episode ended on this step.
"""

from __future__ import annotations

import itertools

MOVES = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1), 4: (0, 0)}
PERMUTATIONS = list(itertools.permutations(range(5)))


def clip(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


class RefGrid:
    """Shared point-agent dynamics; subclasses define ``start``, ``base`` and ``reward``."""

    def __init__(self, grid_size: int, horizon: int, start: tuple[int, int]):
        self.n, self.horizon, self.start = grid_size, horizon, tuple(start)
        self.reset()

    def reset(self) -> tuple[int, int]:
        self.pos, self.t = self.start, 0
        self.on_reset()
        return self.pos

    def on_reset(self) -> None:
        pass

    def base(self, action: int) -> int:
        return action

    def step(self, action: int):
        a = self.base(clip(int(action), 0, 4))  # out-of-range agent actions are clipped
        dx, dy = MOVES[a]
        self.pos = (clip(self.pos[0] + dx, 0, self.n - 1), clip(self.pos[1] + dy, 0, self.n - 1))
        self.t += 1
        reward = self.reward()
        final = self.pos
        done = self.t >= self.horizon
        obs = self.reset() if done else final
        return obs, reward, done, final


class RefDarkroom(RefGrid):
    def __init__(self, goal, grid_size: int = 9, horizon: int = 20):
        self.goal = tuple(goal)
        super().__init__(grid_size, horizon, (grid_size // 2, grid_size // 2))

    def reward(self) -> float:
        return float(self.pos == self.goal)


class RefKeyToDoor(RefGrid):
    def __init__(self, key, door, grid_size: int = 9, horizon: int = 50):
        self.key, self.door = tuple(key), tuple(door)
        super().__init__(grid_size, horizon, (grid_size // 2, grid_size // 2))

    def on_reset(self) -> None:
        self.stage = 0  # 0: looking for the key, 1: holding it, 2: door opened

    def reward(self) -> float:
        if self.stage == 0 and self.pos == self.key:
            self.stage = 1
            return 1.0
        if self.stage == 1 and self.pos == self.door:
            self.stage = 2
            return 1.0
        return 0.0


class RefPermuted(RefGrid):
    def __init__(self, perm_idx: int, grid_size: int = 9, horizon: int = 50):
        self.perm = PERMUTATIONS[perm_idx]
        self.goal = (grid_size - 1, grid_size - 1)
        super().__init__(grid_size, horizon, (0, 0))

    def base(self, action: int) -> int:
        return self.perm[action]

    def reward(self) -> float:
        return float(self.pos == self.goal)


def reference(name: str, task: tuple[int, ...], grid_size: int, horizon: int) -> RefGrid:
    """The reference env of registry name ``name`` for one task tuple of ``task_list()``."""
    if name == "darkroom":
        return RefDarkroom(task, grid_size, horizon)
    if name == "dark_key_to_door":
        return RefKeyToDoor(task[:2], task[2:], grid_size, horizon)
    if name == "darkroom_permuted":
        return RefPermuted(task[0], grid_size, horizon)
    raise ValueError(f"no reference for {name!r}")


def manhattan(a, b) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def optimal_return(name: str, task: tuple[int, ...], grid_size: int, horizon: int) -> float:
    """Best episode return by hand (used to check the envs' jittable oracles)."""
    centre = (grid_size // 2, grid_size // 2)
    if name == "darkroom":
        return float(max(0, min(horizon, horizon + 1 - manhattan(centre, task))))
    if name == "dark_key_to_door":
        t_key = max(manhattan(centre, task[:2]), 1)
        t_door = t_key + max(manhattan(task[:2], task[2:]), 1)
        return float(t_key <= horizon) + float(t_door <= horizon)
    if name == "darkroom_permuted":
        d = 2 * (grid_size - 1)
        return float(max(0, min(horizon, horizon + 1 - d)))
    raise ValueError(f"no reference for {name!r}")


def greedy_action(ref: RefGrid) -> int:
    """An agent action on a shortest path to the reference's current target (x first)."""
    if isinstance(ref, RefKeyToDoor):
        target = ref.key if ref.stage == 0 else ref.door if ref.stage == 1 else ref.pos
    else:
        target = ref.goal
    dx, dy = target[0] - ref.pos[0], target[1] - ref.pos[1]
    base = 0 if dx > 0 else 1 if dx < 0 else 2 if dy > 0 else 3 if dy < 0 else 4
    if isinstance(ref, RefPermuted):
        return ref.perm.index(base)
    return base
