"""Real Meta-World ML1 as a task family stepped on the HOST (the optional ``metaworld`` extra).

Unlike every other family in ``dicp_envs``, these envs are MuJoCo simulations driven from
Python (``metaworld`` 3.x on ``mujoco`` 3.3): they cannot be jitted or vmapped, so the family
declares ``host_stepped = True`` and the library steps it from a host loop
(``dicp_jax.host``): one jitted call per env step computes the actions of every task and
stream at once, and ``HostBatch`` steps all the envs with them.

What follows the paper's protocol (its ``metaworld/`` code path):

- A family per ML1 benchmark name (``metaworld/reach-v3``, ``metaworld/push-v3``, any of
  ``ML1_TASKS``). Its tasks are ``metaworld.ML1(name, seed=0)``'s: task ``i < 50`` is
  ``train_tasks[i]`` (the histories), ``50 + i`` is ``test_tasks[i]`` (the meta-test; drawn
  by Meta-World from ``seed + 1``), so train and test are disjoint and fixed by the seed.
  A task's data is Meta-World's ``rand_vec`` (object and goal positions).
- Each env is ``cls(); env.set_task(task)``: the task's positions are frozen, so every
  reset starts it in the same state, and its goal is zeroed in the observation.
- Episodes are ``HORIZON = 100`` steps (Meta-World allows up to 500): ``HostBatch`` is
  stepped 100 times and reset, never terminated.
- Observations: the model sees the first 11 dimensions (hand xyz, gripper opening, first
  object's position and quaternion; 18 for hammer, stick-push and stick-pull, whose second
  object matters), as the paper's dataset slices them; the source PPO sees the full 39-D
  observation (previous frame included, goal zeroed), as the paper's SB3 PPO did.
- Rewards are Meta-World's own (in [0, 10]); ``info["success"]`` is recorded per step.

``metaworld`` is imported only when tasks or envs are needed, so ``dicp list`` and the
registry work without it; a missing install raises ``ConfigError`` naming the extra.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import multiprocessing
import pickle
from typing import Any, ClassVar

import numpy as np
from gymnax.environments import spaces

from dicp_envs.base import TaskEnv
from dicp_jax.config import ConfigError

PREFIX = "metaworld/"  # registered names: PREFIX + an ML1 task name
HORIZON = 100
ACTION_DIM = 4
FULL_OBS_DIM = 39  # Meta-World's observation: 18 now, 18 previous frame, goal (zeroed in ML1)
N_GOALS = 50  # train tasks and test tasks per ML1 benchmark
ML1_SEED = 0  # the paper's mw_seed
# The paper's code keeps 18 dimensions (both objects) for these three.
OBS18 = frozenset({"hammer-v3", "stick-push-v3", "stick-pull-v3"})
INSTALL_HINT = ("Meta-World is not installed: pip install -e '.[metaworld]' (metaworld 3.x "
                "pins mujoco 3.3.0; see the README, 'Real Meta-World')")

# Meta-World v3's 50 environments (``metaworld.ML1.ENV_NAMES``), listed here so the families
# can be registered without importing metaworld (tests check the list against it).
ML1_TASKS = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3",
    "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-v3",
    "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3",
    "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3",
    "faucet-open-v3", "hammer-v3", "hand-insert-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "pick-out-of-hole-v3", "pick-place-v3",
    "pick-place-wall-v3", "plate-slide-back-side-v3", "plate-slide-back-v3",
    "plate-slide-side-v3", "plate-slide-v3", "push-back-v3", "push-v3", "push-wall-v3",
    "reach-v3", "reach-wall-v3", "shelf-place-v3", "soccer-v3", "stick-pull-v3",
    "stick-push-v3", "sweep-into-v3", "sweep-v3", "window-close-v3", "window-open-v3",
)


def require_metaworld() -> Any:
    """The ``metaworld`` module, or a ``ConfigError`` naming the extra to install."""
    try:
        import metaworld
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return metaworld


def obs_dim_of(task_name: str) -> int:
    return 18 if task_name in OBS18 else 11


# -- tasks ----------------------------------------------------------------------------------------
@functools.cache
def benchmark(task_name: str, seed: int = ML1_SEED) -> Any:
    """``metaworld.ML1(task_name, seed)``, built once per process (it draws its 100 goals by
    resetting an env 100 times, a few seconds)."""
    return require_metaworld().ML1(task_name, seed=seed)


def ml1_tasks(task_name: str) -> list[Any]:
    """The family's task list as Meta-World ``Task`` records: train tasks, then test tasks."""
    require_metaworld()  # first: ``benchmark`` is cached
    ml1 = benchmark(task_name)
    tasks = list(ml1.train_tasks) + list(ml1.test_tasks)
    assert len(tasks) == 2 * N_GOALS
    return tasks


def rand_vec(task: Any) -> np.ndarray:
    """A Meta-World task's frozen positions (its ``rand_vec``)."""
    return np.asarray(pickle.loads(task.data)["rand_vec"], np.float64)


def ml1_splits(split: str, seed: int | None = None) -> np.ndarray:
    """``Family.splits``: the first 50 tasks are ML1's train tasks, the last 50 its test
    tasks. One split seed (ML1's seed 0, the paper's)."""
    seed = ML1_SEED if seed is None else int(seed)
    if seed != ML1_SEED:
        raise ValueError(f"Meta-World ML1 families have one split (seed {ML1_SEED}, the "
                         f"paper's), got split seed {seed}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    start = 0 if split == "train" else N_GOALS
    return np.arange(start, start + N_GOALS, dtype=np.int64)


# -- host envs -----------------------------------------------------------------------------------
_MODELS: dict[str, Any] = {}


@contextlib.contextmanager
def _shared_models():
    """Build envs from one compiled MuJoCo model per XML file, each env getting its own copy.

    Why: compiling a Sawyer XML (``MjModel.from_xml_path``) is nearly all of an env's
    construction time, and collection builds one env per task and stream. A copy of the
    compiled model is the same model (envs then move their own sites and bodies in it), so
    the envs step exactly as freshly built ones (tested against Meta-World's own)."""
    import mujoco
    from gymnasium.envs.mujoco import mujoco_env

    original = mujoco_env.MujocoEnv._initialize_simulation

    def initialize(env):
        if env.fullpath not in _MODELS:
            _MODELS[env.fullpath] = mujoco.MjModel.from_xml_path(env.fullpath)
        model = copy.copy(_MODELS[env.fullpath])
        model.vis.global_.offwidth = env.width
        model.vis.global_.offheight = env.height
        return model, mujoco.MjData(model)

    mujoco_env.MujocoEnv._initialize_simulation = initialize
    try:
        yield
    finally:
        mujoco_env.MujocoEnv._initialize_simulation = original


def build_envs(task_name: str, tasks: list[Any]) -> list[Any]:
    """One Meta-World env per ``Task``, each set to its task (positions frozen)."""
    require_metaworld()
    cls = _env_class(task_name)
    envs = []
    with _shared_models():
        for task in tasks:
            env = cls()
            env.set_task(task)
            envs.append(env)
    return envs


def _env_class(task_name: str) -> type:
    from metaworld import env_dict

    return env_dict.ALL_V3_ENVIRONMENTS[task_name]


def reset_envs(envs: list[Any]) -> np.ndarray:
    """Reset every env: ``float64 [n, 39]`` observations."""
    return np.stack([env.reset()[0] for env in envs]) if envs else np.zeros((0, FULL_OBS_DIM))


def step_envs(envs: list[Any], actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step env ``i`` with ``actions[i]`` (clipped by Meta-World itself): ``(obs float64
    [n, 39], reward float64 [n], success float32 [n])``."""
    obs, rew, ok = [], [], []
    for env, a in zip(envs, actions, strict=True):
        o, r, _, _, info = env.step(a)
        obs.append(o)
        rew.append(r)
        ok.append(info["success"])
    n = len(envs)
    return (np.stack(obs) if n else np.zeros((0, FULL_OBS_DIM)), np.asarray(rew, np.float64),
            np.asarray(ok, np.float32))


def _worker(conn: Any, task_name: str, tasks: list[Any]) -> None:
    """A worker process: owns its envs, answers ``reset`` / ``step`` / ``close``."""
    try:
        envs = build_envs(task_name, tasks)
        conn.send(("ok", None))
    except Exception as e:  # report it to the parent, which raises it
        conn.send(("error", repr(e)))
        return
    while True:
        cmd, arg = conn.recv()
        if cmd == "reset":
            conn.send(reset_envs(envs))
        elif cmd == "step":
            conn.send(step_envs(envs, arg))
        else:
            conn.close()
            return


class HostBatch:
    """``n`` Meta-World envs stepped together: ``reset() -> obs [n, 39]``,
    ``step(actions [n, 4]) -> (obs [n, 39], reward [n], success [n])`` (float64 obs and
    rewards as Meta-World returns them).

    ``workers = 0`` steps them in this process; ``workers = k`` splits them into ``k``
    contiguous slices, each owned by a worker process (spawned: the parent runs JAX, which
    must not be forked), stepped in parallel. The caller keeps the episode clock (every env
    is reset after ``HORIZON`` steps), so no auto-reset is needed."""

    def __init__(self, task_name: str, tasks: list[Any], workers: int = 0):
        require_metaworld()
        self.n = len(tasks)
        self.workers = max(0, min(int(workers), self.n))
        self._envs: list[Any] = []
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        if self.workers == 0:
            self._envs = build_envs(task_name, tasks)
            return
        ctx = multiprocessing.get_context("spawn")
        bounds = np.linspace(0, self.n, self.workers + 1).round().astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, task_name, tasks[lo:hi]),
                               daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            status, err = conn.recv()
            if status != "ok":
                self.close()
                raise RuntimeError(f"a Meta-World worker failed to build its envs: {err}")
        self._bounds = bounds

    def reset(self) -> np.ndarray:
        if not self._conns:
            return reset_envs(self._envs)
        for conn in self._conns:
            conn.send(("reset", None))
        return np.concatenate([conn.recv() for conn in self._conns])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self.n, ACTION_DIM):
            raise ValueError(f"actions must be [{self.n}, {ACTION_DIM}], got {actions.shape}")
        if not self._conns:
            return step_envs(self._envs, actions)
        for conn, lo, hi in zip(self._conns, self._bounds[:-1], self._bounds[1:], strict=True):
            conn.send(("step", actions[lo:hi]))
        parts = [conn.recv() for conn in self._conns]
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs, self._envs = [], [], []

    def __enter__(self) -> HostBatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the family ----------------------------------------------------------------------------------
class ML1Env(TaskEnv):
    """One ML1 benchmark as a task family: what the library reads (declarations, sizes, the
    task list) plus ``batch(task_index, streams, workers)``, the host envs to step.

    Not a gymnax env: it has no ``reset``/``step`` of its own (``host_stepped``)."""

    codec: ClassVar[str] = "continuous"
    host_stepped: ClassVar[bool] = True
    has_oracle: ClassVar[bool] = False
    observation_is_state: ClassVar[bool] = False  # velocities and the goal are hidden
    reward_of_arrival: ClassVar[bool] = False  # not declared: Meta-World's shaping varies

    def __init__(self, task_name: str = "reach-v3", horizon: int = HORIZON):
        if task_name not in ML1_TASKS:
            raise ConfigError(f"unknown Meta-World ML1 task {task_name!r}; valid: "
                              f"{', '.join(ML1_TASKS)}")
        if not 1 <= int(horizon) <= 500:
            raise ConfigError(f"horizon must be in [1, 500] (Meta-World's max_path_length), "
                              f"got {horizon}")
        self.task_name = task_name
        self.horizon = int(horizon)
        self.obs_dim = obs_dim_of(task_name)
        self.source_obs_dim = FULL_OBS_DIM
        self.action_dim = self.num_actions = ACTION_DIM

    def storage_dtypes(self) -> dict[str, Any]:
        return {"obs": np.float32, "action": np.float32, "reward": np.float32,
                "done": np.bool_}

    @property
    def default_params(self) -> None:
        """No jittable params: a task is stepped on the host."""
        return None

    def action_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def observation_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    def task_list(self) -> list[tuple[float, ...]]:
        """Every task's ``rand_vec``: ML1's 50 train tasks, then its 50 test tasks."""
        return [tuple(float(v) for v in rand_vec(t)) for t in ml1_tasks(self.task_name)]

    def params_for(self, tasks: Any) -> np.ndarray:
        """The tasks' ``rand_vec`` rows ``float32 [N, k]`` (what a method's data preparation
        may read; the envs themselves are built by ``batch``)."""
        tasks = np.asarray(tasks, np.float32)
        return tasks[None] if tasks.ndim == 1 else tasks

    def model_obs(self, obs: np.ndarray) -> np.ndarray:
        """The model's slice of full observations ``[..., 39] -> float32 [..., obs_dim]``."""
        return np.asarray(obs[..., :self.obs_dim], np.float32)

    def batch(self, task_index: Any, streams: int = 1, workers: int = 0) -> HostBatch:
        """Host envs for ``task_index`` (into ``task_list()``), ``streams`` copies of each,
        task-major: env ``i * streams + s`` is stream ``s`` of task ``task_index[i]``."""
        tasks = ml1_tasks(self.task_name)
        chosen = [tasks[int(i)] for i in np.asarray(task_index).reshape(-1)
                  for _ in range(int(streams))]
        return HostBatch(self.task_name, chosen, workers)


def factory(task_name: str):
    """``Family.factory`` for one ML1 benchmark name."""
    return functools.partial(ML1Env, task_name)


__all__ = ["FULL_OBS_DIM", "HORIZON", "INSTALL_HINT", "ML1_TASKS", "OBS18", "PREFIX", "HostBatch",
           "ML1Env", "build_envs", "factory", "ml1_splits", "ml1_tasks", "rand_vec",
           "require_metaworld"]
