"""Shared machinery of the continuous arm families (Reach, Push): a Meta-World-like hand
simulated by MuJoCo's JAX engine through Brax's ``mjx`` pipeline.

Meta-World's Sawyer is driven through a mocap body: each step the 4-D action is clipped to
``[-1, 1]``, ``a[:3] * 0.01`` moves the mocap target (clipped to the hand space) and ``a[3]``
sets the gripper. Here a small MJCF model stands in for the arm: the hand is a sphere on three
slide joints whose position servos track that integrated target (the weld of the mocap), and
one finger on a fourth servoed slide joint gives the gripper opening. Slide joints anchored at
the world origin make the joint coordinates the Cartesian positions, so observations are read
from ``qpos`` directly. Coordinates, workspace and task boxes follow Meta-World's
(``sawyer_reach_v3``, ``sawyer_push_v3``); the episode is 100 steps, truncated, never
terminated, and starts from the same state for a given task.

Observation (float32[11], Meta-World's first 11 slots, the goal not observed):
``hand xyz (3), gripper opening in [0, 1] (1), object xyz (3), object quaternion (4)``.

Backend: ``mjx`` (Brax's wrapper of ``mujoco.mjx``), chosen by measuring Brax's four pipelines
on this model: ``mjx`` is the fastest of those that reproduce MuJoCo's dynamics; ``spring`` and
``positional`` step faster but ignore joint damping, so a pushed puck never stops and the
servoed hand overshoots its target; ``generalized`` is several times slower.
benchmarks/bench_brax_envs.py times the families and Brax's ``reacher`` on each pipeline.

Brax and MuJoCo are imported when an arm env is built, not when ``dicp_envs`` is imported:
the grid families need neither, and mujoco prints a warning on stdout at import.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import types
import warnings
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from dicp_envs.base import TaskEnv
from dicp_envs.grid import check_int

OBS_DIM = 11
ACTION_DIM = 4
ACTION_SCALE = 0.01  # metres of mocap travel per unit of action per step (Meta-World)
HORIZON = 100
SUCCESS_RADIUS = 0.05  # Meta-World's TARGET_RADIUS: success iff distance <= this

HAND_INIT = (0.0, 0.6, 0.2)  # Meta-World's hand_init_pos
HAND_RADIUS = 0.015  # the hand's collision sphere, centred on the tool centre point
# Bounds of the mocap target (tool centre point): Meta-World's hand space in x, y; in z down to
# the hand resting on the table (z = 0), so it can push an object on it.
HAND_LOW = (-0.5, 0.40, HAND_RADIUS)
HAND_HIGH = (0.5, 1.0, 0.5)
GRIP_TRAVEL = 0.1  # finger travel at full opening; opening = travel / GRIP_TRAVEL
OBJ_Z = 0.02  # object centre height (Meta-World's obj_init_pos z)
OBJ_QUAT = (1.0, 0.0, 0.0, 0.0)  # the object slides without turning: identity orientation

# Physics: 2 substeps of 10 ms per env step; servo gains critically damped (damping =
# 2 sqrt(kp m)) with a time constant of one substep, so the hand follows the target with a
# lag under 2 cm at full speed, like the mocap weld's.
TIMESTEP = 0.01
N_FRAMES = 2
HAND_MASS, HAND_KP, HAND_DAMPING = 1.0, 2500.0, 100.0
# The finger is light so that moving it barely shakes the hand (it slides along the hand's x).
FINGER_MASS, FINGER_KP, FINGER_DAMPING = 0.01, 25.0, 1.0
# Constraint solver: a contact or two at most, which Newton solves in a couple of iterations;
# bounding the iterations stops a vmapped batch from running MuJoCo's default 100 to a float32
# tolerance it cannot reach.
SOLVER_ITERATIONS, LINESEARCH_ITERATIONS = 4, 8

# Drawn tasks: block b of TASK_BLOCK tasks is drawn from numpy seed b (Meta-World's ML1 draws
# its train tasks from ``seed`` and its test tasks from ``seed + 1``); split seed s takes
# block 2s as train and block 2s + 1 as test, so every split seed has disjoint, fixed tasks.
TASK_BLOCK = 50
N_TASKS = 1000


# -- MJCF ---------------------------------------------------------------------------------------
def arm_mjcf(objects: str = "", timestep: float = TIMESTEP) -> str:
    """The hand model, with ``objects`` (MJCF bodies) added to the world.

    Gravity is off: the mocap weld holds Meta-World's hand against gravity, and the objects
    here slide in the table plane without a vertical degree of freedom. The finger has no
    collision geometry: it only carries the gripper state."""
    servo = 'kp="{kp}" ctrllimited="false"'
    return f"""
<mujoco model="dicp_arm">
  <option timestep="{timestep}" gravity="0 0 0" iterations="{SOLVER_ITERATIONS}"
          ls_iterations="{LINESEARCH_ITERATIONS}"/>
  <worldbody>
    <body name="hand">
      <joint name="hand_x" type="slide" axis="1 0 0" damping="{HAND_DAMPING}"/>
      <joint name="hand_y" type="slide" axis="0 1 0" damping="{HAND_DAMPING}"/>
      <joint name="hand_z" type="slide" axis="0 0 1" damping="{HAND_DAMPING}"/>
      <geom name="hand" type="sphere" size="{HAND_RADIUS}" mass="{HAND_MASS}"/>
      <body name="finger">
        <joint name="finger" type="slide" axis="1 0 0" damping="{FINGER_DAMPING}"/>
        <geom type="sphere" size="0.005" mass="{FINGER_MASS}" contype="0" conaffinity="0"/>
      </body>
    </body>
    {objects}
  </worldbody>
  <actuator>
    <position joint="hand_x" {servo.format(kp=HAND_KP)}/>
    <position joint="hand_y" {servo.format(kp=HAND_KP)}/>
    <position joint="hand_z" {servo.format(kp=HAND_KP)}/>
    <position joint="finger" {servo.format(kp=FINGER_KP)}/>
  </actuator>
</mujoco>"""


@functools.cache
def physics() -> types.SimpleNamespace:
    """Brax and MuJoCo, imported on first use (see the module docstring). mujoco's import
    prints a note about its optional GPU backend (warp) on stdout; it is kept out of ours,
    where the CLI writes its tables."""
    with contextlib.redirect_stdout(io.StringIO()):
        from brax import base
        from brax.io import mjcf
        from brax.mjx import pipeline
        from mujoco import mjx
    return types.SimpleNamespace(base=base, mjcf=mjcf, pipeline=pipeline, mjx=mjx)


def load_system(xml: str) -> Any:
    """A Brax ``System`` from MJCF text."""
    with warnings.catch_warnings():  # "Brax System ... not actively maintained": we know
        warnings.simplefilter("ignore", UserWarning)
        return physics().mjcf.loads(xml)


def blank_physics(sys: Any) -> Any:
    """An mjx pipeline state at ``q = 0``, built without running physics.

    MuJoCo's dynamic state is (time, qpos, qvel, act, ctrl, warm start, applied forces,
    mocap); ``mjx.step`` recomputes every other field (kinematics, contacts, forces) from it.
    So writing ``qpos``/``ctrl`` into this blank is a complete reset, without the cost of
    ``pipeline.init``'s ``mjx.forward``, which gymnax's auto-reset would pay on every step
    (and in every compile). Its derived fields (``x``, ``xpos``, ...) are stale until the
    first step; observations read only ``qpos``."""
    ph = physics()
    data = ph.mjx.make_data(sys)
    n_links = sys.nbody - 1  # bodies but the world
    fields = dict(data.__dict__)
    # the contact record in Brax's format, exactly as the pipeline's own init and step write it
    # (the auto-reset selects leaf by leaf between this state and a stepped one)
    contact = data._impl.contact if hasattr(data, "_impl") else data.contact  # mjx >= 3.3
    fields["contact"] = ph.pipeline._reformat_contact(sys, contact)
    return ph.pipeline.State(q=data.qpos, qd=data.qvel, x=ph.base.Transform.zero((n_links,)),
                             xd=ph.base.Motion.zero((n_links,)), **fields)


def simulate(sys: Any, state: Any, ctrl: chex.Array, n_frames: int) -> Any:
    """``n_frames`` physics substeps under a constant control ``ctrl`` [nu]."""
    step = physics().pipeline.step

    def substep(p, _):
        return step(sys, p, ctrl), None

    return jax.lax.scan(substep, state, None, length=n_frames)[0]


# -- Meta-World reward helpers ----------------------------------------------------------------
def tolerance(x: chex.Array, upper: float, margin: chex.Array,
              value_at_margin: float = 0.1) -> chex.Array:
    """Meta-World's ``reward_utils.tolerance`` with ``bounds=(0, upper)`` and the
    ``long_tail`` sigmoid, for a distance ``x >= 0``: 1 inside the bound, else
    ``1 / ((d * s)^2 + 1)`` with ``d = (x - upper) / margin`` and ``s`` set so that the
    value is ``value_at_margin`` one margin outside the bound."""
    scale = math.sqrt(1.0 / value_at_margin - 1.0)
    d = (x - upper) / jnp.maximum(margin, 1e-8)  # margin 0 (start on the goal) -> a cliff
    return jnp.where(x <= upper, 1.0, 1.0 / ((d * scale) ** 2 + 1.0))


def distance(a: chex.Array, b: chex.Array) -> chex.Array:
    return jnp.linalg.norm(a - b, axis=-1)


# -- observation --------------------------------------------------------------------------------
def observation(q: chex.Array, obj_pos: chex.Array) -> chex.Array:
    """float32[11] from the hand joints ``q[:4]`` and the object centre ``obj_pos`` [3]."""
    hand = q[:3]
    opening = jnp.clip(q[3] / GRIP_TRAVEL, 0.0, 1.0)
    obs = jnp.concatenate([hand, opening[None], obj_pos, jnp.asarray(OBJ_QUAT)])
    return obs.astype(jnp.float32)


# -- tasks ----------------------------------------------------------------------------------------
def draw_tasks(draw_block: Any, n_tasks: int = N_TASKS, block: int = TASK_BLOCK
               ) -> list[tuple[float, ...]]:
    """``n_tasks`` task tuples, block ``b`` drawn by ``draw_block(rng, block)`` from numpy seed
    ``b``: a fixed list, the same on every machine (numpy's PCG64 is stable)."""
    rows = []
    for b in range(-(-n_tasks // block)):
        rows.append(np.asarray(draw_block(np.random.default_rng(b), block), np.float64))
    tasks = np.concatenate(rows)[:n_tasks].astype(np.float32)
    return [tuple(float(v) for v in t) for t in tasks]


def block_splits(split: str, seed: int | None = None) -> np.ndarray:
    """``Family.splits`` of the arm families: split seed ``s`` -> block ``2s`` (train) or
    ``2s + 1`` (test) of ``draw_tasks``'s list, indices into ``task_list()``."""
    seed = 0 if seed is None else int(seed)
    n_seeds = N_TASKS // (2 * TASK_BLOCK)
    if not 0 <= seed < n_seeds:
        raise ValueError(f"split seed must be in [0, {n_seeds}) for drawn arm tasks, got {seed}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    start = (2 * seed + (split == "test")) * TASK_BLOCK
    return np.arange(start, start + TASK_BLOCK, dtype=np.int64)


def uniform(rng: np.random.Generator, low: Any, high: Any, n: int) -> np.ndarray:
    """``n`` i.i.d. draws from the box ``[low, high]`` (Meta-World's ``np.random.uniform``)."""
    return rng.uniform(np.asarray(low), np.asarray(high), size=(n, len(low)))


# -- the env ------------------------------------------------------------------------------------
@struct.dataclass
class ArmState:
    physics: Any  # brax.mjx.base.State: MuJoCo data of one env
    target: chex.Array  # float32[3]: the mocap target the hand servos track
    time: chex.Array  # int32[]


class ArmEnv(TaskEnv, environment.Environment):
    """Base class: the hand, its action semantics, the episode; subclasses add the objects,
    the task (``EnvParams``) and the reward.

    Subclasses provide ``OBJECTS`` (MJCF), ``TASK_DIM``, ``initial_q(params)``,
    ``object_pos(q, params)``, ``reward(obs, params) -> (reward, success)``,
    ``draw_block(rng, n)`` and ``params_for(tasks)``."""

    codec: ClassVar[str] = "continuous"
    has_oracle: ClassVar[bool] = False
    # velocities and the mocap target are hidden
    observation_is_state: ClassVar[bool] = False
    # the reward is a function of the observation a step arrives at (and of the task)
    reward_of_arrival: ClassVar[bool] = True
    OBJECTS: ClassVar[str] = ""
    TASK_DIM: ClassVar[int] = 3

    def __init__(self, horizon: int = HORIZON, n_frames: int = N_FRAMES,
                 timestep: float = TIMESTEP):
        super().__init__()
        self.horizon = check_int("horizon", horizon, minimum=1)
        self.n_frames = check_int("n_frames", n_frames, minimum=1)
        if not timestep > 0:
            raise ValueError(f"timestep must be positive, got {timestep}")
        self.timestep = float(timestep)
        self.sys = load_system(arm_mjcf(self.OBJECTS, self.timestep))
        self._blank = blank_physics(self.sys)

    def storage_dtypes(self) -> dict[str, Any]:
        return {"obs": np.float32, "action": np.float32, "reward": np.float32,
                "done": np.bool_}

    # -- gymnax plumbing ------------------------------------------------------------------
    @property
    def default_params(self):
        """The first task of ``task_list()`` (the first train task of split seed 0)."""
        batch = self.params_for(np.asarray(self.task_list()[:1]))
        return jax.tree.map(lambda x: x[0], batch)

    @property
    def obs_dim(self) -> int:
        return OBS_DIM

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def num_actions(self) -> int:
        """gymnax's name for the action dimension of a continuous env."""
        return ACTION_DIM

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (ACTION_DIM,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (OBS_DIM,), jnp.float32)

    def is_truncated(self, state: ArmState, params) -> chex.Array:
        return state.time >= self.horizon

    def is_terminated(self, state: ArmState, params) -> chex.Array:
        return jnp.array(False)

    def get_obs(self, state: ArmState, params=None, key=None) -> chex.Array:
        q = state.physics.qpos
        return observation(q, self.object_pos(q, params))

    def reset_env(self, key: chex.PRNGKey, params):
        """The task's fixed start: hand at ``HAND_INIT``, gripper open, objects where the
        task puts them, at rest (``key`` unused: deterministic given ``params``)."""
        q0 = self.initial_q(params)  # [nq]
        chex.assert_shape(q0, (self.sys.nq,))
        target = jnp.asarray(HAND_INIT, jnp.float32)
        ctrl = jnp.concatenate([target, jnp.full((1,), GRIP_TRAVEL, jnp.float32)])
        physics = self._blank.replace(qpos=q0, q=q0, ctrl=ctrl)
        state = ArmState(physics=physics, target=target, time=jnp.int32(0))
        return self.get_obs(state, params), state

    def step_env(self, key: chex.PRNGKey, state: ArmState, action: chex.Array, params):
        """Meta-World's action semantics: clip to [-1, 1], move the target by
        ``0.01 a[:3]`` within the hand space, set the gripper from ``a[3]`` (+1 closes)."""
        chex.assert_shape(action, (ACTION_DIM,))
        a = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        target = jnp.clip(state.target + ACTION_SCALE * a[:3],
                          jnp.asarray(HAND_LOW), jnp.asarray(HAND_HIGH))
        grip = 0.5 * GRIP_TRAVEL * (1.0 - a[3])
        ctrl = jnp.concatenate([target, grip[None]])  # [4]
        physics = simulate(self.sys, state.physics, ctrl, self.n_frames)
        state = ArmState(physics=physics, target=target, time=state.time + 1)
        obs = self.get_obs(state, params)
        reward, success = self.reward(obs, params)
        info = {"success": success.astype(jnp.float32)}
        return obs, state, reward.astype(jnp.float32), jnp.array(False), info

    # -- task set (host side) ---------------------------------------------------------------
    def task_list(self) -> list[tuple[float, ...]]:
        """Every task, in a fixed order: ``N_TASKS`` draws, block b from numpy seed b."""
        return _cached_tasks(type(self))

    def check_tasks(self, tasks: Any) -> np.ndarray:
        """Host-side validation of a task array -> float32[N, TASK_DIM]."""
        tasks = np.asarray(tasks, dtype=np.float32)
        if tasks.ndim == 1:
            tasks = tasks[None]
        if tasks.ndim != 2 or tasks.shape[1] != self.TASK_DIM:
            raise ValueError(f"{type(self).__name__} tasks must be [N, {self.TASK_DIM}], "
                             f"got shape {tasks.shape}")
        if not np.isfinite(tasks).all():
            raise ValueError("tasks must be finite")
        return tasks

    # -- subclass hooks --------------------------------------------------------------------
    def initial_q(self, params) -> chex.Array:
        raise NotImplementedError

    def object_pos(self, q: chex.Array, params) -> chex.Array:
        raise NotImplementedError

    def reward(self, obs: chex.Array, params) -> tuple[chex.Array, chex.Array]:
        raise NotImplementedError

    @staticmethod
    def draw_block(rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def params_for(self, tasks: Any):
        raise NotImplementedError


_TASKS: dict[type, list[tuple[float, ...]]] = {}


def _cached_tasks(cls: type) -> list[tuple[float, ...]]:
    """``draw_tasks`` once per family class (the list is fixed, and drawn in a loop)."""
    if cls not in _TASKS:
        _TASKS[cls] = draw_tasks(cls.draw_block)
    return _TASKS[cls]


def hand_start_q() -> np.ndarray:
    """Hand joints at the start: ``HAND_INIT`` and the finger open."""
    return np.asarray([*HAND_INIT, GRIP_TRAVEL], np.float32)


__all__ = ["ACTION_DIM", "HAND_INIT", "HORIZON", "OBS_DIM", "SUCCESS_RADIUS", "ArmEnv",
           "ArmState", "block_splits", "distance", "observation", "tolerance"]
