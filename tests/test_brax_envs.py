"""The continuous arm families (Reach, Push on Brax's MJX pipeline).

Compiling a physics step is the cost here (seconds per family), so each family compiles ONE
scripted rollout (module-scoped fixtures) that the tests share: reset and step jitted and
vmapped over tasks x streams, the first observations, truncation and auto-reset, rewards
recomputed from the observations, success of a scripted controller on every test task. It
is compiled with XLA's backend optimisations off: the rollout is small, the compile is what
costs. Everything else calls pure functions eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dicp_envs
from dicp_envs.brax_arm import (
    ACTION_SCALE,
    HAND_INIT,
    HORIZON,
    N_TASKS,
    OBJ_Z,
    TASK_BLOCK,
    block_splits,
    tolerance,
)
from dicp_envs.push import GOAL_HIGH as PUSH_GOAL_HIGH
from dicp_envs.push import GOAL_LOW as PUSH_GOAL_LOW
from dicp_envs.push import (
    MIN_GOAL_OBJ,
    TOUCH,
    Push,
    push_reward,
)
from dicp_envs.reach import GOAL_HIGH, GOAL_LOW, OBJ_POS, Reach, reach_reward

pytestmark = pytest.mark.filterwarnings(  # brax 0.14.2's mjx pipeline reads a deprecated field
    "ignore:Accessing `ncon` directly:DeprecationWarning")

N_TEST = TASK_BLOCK  # every test task of split seed 0
N_STREAMS = 2  # stream 1 sends out-of-range actions that clip to stream 0's (the twin)
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def envs() -> dict[str, Reach | Push]:
    """One env per family (building one loads its MJCF)."""
    return {name: dicp_envs.make(name)[0] for name in ("reach", "push")}


@pytest.fixture(scope="module")
def reach(envs) -> Reach:
    return envs["reach"]


@pytest.fixture(scope="module")
def push(envs) -> Push:
    return envs["push"]


def held_out_tasks(name: str, env: Reach | Push) -> np.ndarray:
    """float32[50, k]: the test tasks of split seed 0."""
    return np.asarray(env.task_list())[dicp_envs.split_indices(name, "test")]


def toward(hand: jax.Array, target: jax.Array, gain: float = 1.0) -> jax.Array:
    """Action moving ``hand`` toward ``target``, scaled (not clipped per axis) into
    [-1, 1] so the hand moves straight at it."""
    v = gain * (target - hand) / ACTION_SCALE
    return v / jnp.maximum(1.0, jnp.abs(v).max())


def reach_policy(obs: jax.Array, params, t: jax.Array) -> jax.Array:
    """Straight at the goal, clipped; gripper open."""
    xyz = jnp.clip((params.goal - obs[:3]) / ACTION_SCALE, -1.0, 1.0)
    return jnp.concatenate([xyz, -jnp.ones(1)])


def push_policy(obs: jax.Array, params, t: jax.Array) -> jax.Array:
    """Above a point behind the puck (away from the goal), down to the table, then push
    toward the goal along the line through the puck; stop once the puck is there."""
    hand, obj = obs[:3], obs[4:6]
    u = params.goal[:2] - obj
    u = u / (jnp.linalg.norm(u) + 1e-6)
    behind = jnp.concatenate([obj - 0.06 * u, jnp.where(t < 30, 0.15, 0.0)[None]])
    through = jnp.concatenate([obj - 0.02 * u, jnp.zeros(1)])
    a = toward(hand, jnp.where(t < 40, behind, through), gain=0.5)
    a = jnp.where(jnp.linalg.norm(obj - params.goal[:2]) < 0.02, 0.0, a)
    return jnp.concatenate([a, jnp.zeros(1)])


def with_clipped_twin(a: jax.Array) -> jax.Array:
    """[A] -> [N_STREAMS = 2, A]: the action, and a copy pushed beyond [-1, 1] wherever it
    sits on a bound (the env's clipping must make the two streams identical)."""
    over = a + 4.0 * jnp.sign(a) * (jnp.abs(a) >= 1.0)
    return jnp.stack([a, over])


def rollout(env, policy, params, nested: bool):
    """One jit: reset + ``HORIZON + 1`` steps of ``policy`` over tasks x ``N_STREAMS``
    streams -> the first observations [N, S, 11] and per step (obs, reward, term, trunc,
    info) [T+1, N, S, ...]. ``nested``: a vmap over tasks of a vmap over streams (how the
    sources collect); else one vmap over task-major rows (half the tracing)."""
    n, s = jax.tree.leaves(params)[0].shape[0], N_STREAMS
    if nested:
        step = jax.vmap(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
        reset = jax.vmap(jax.vmap(env.reset, in_axes=(0, None)))
        rows, grid, row_params = (lambda x: x), (lambda x: x), params
    else:
        step, reset = jax.vmap(env.step), jax.vmap(env.reset)
        rows = lambda x: x.reshape(n * s, *x.shape[2:])  # [N, S, ...] -> [N * S, ...]
        grid = lambda x: x.reshape(x.shape[0], n, s, *x.shape[2:])  # [T, N * S] -> [T, N, S]
        row_params = jax.tree.map(lambda x: jnp.repeat(x, s, axis=0), params)

    def run(key):
        keys = rows(jax.random.split(key, (n, s)))
        obs0, state = reset(keys, row_params)

        def body(carry, t):
            obs, state = carry
            first = obs.reshape(n, s, -1)[:, 0]  # [N, 11]: stream 0 of each task
            a = jax.vmap(lambda o, p: policy(o, p, t))(first, params)  # [N, A]
            a = rows(jax.vmap(with_clipped_twin)(a))  # [N, S, A] (rows)
            obs, state, reward, term, trunc, info = step(keys, state, a, row_params)
            return (obs, state), (obs, reward, term, trunc, info)

        _, out = jax.lax.scan(body, (obs0, state), jnp.arange(HORIZON + 1))
        return obs0.reshape(n, s, -1), jax.tree.map(grid, out)

    key = jax.random.key(0)
    run = jax.jit(run).lower(key).compile(compiler_options=QUICK_COMPILE)
    return jax.device_get(run(key))


@pytest.fixture(scope="module")
def reach_run(reach):
    params = reach.params_for(held_out_tasks("reach", reach))
    return params, rollout(reach, reach_policy, params, nested=True)


@pytest.fixture(scope="module")
def push_run(push):
    params = push.params_for(held_out_tasks("push", push))
    return params, rollout(push, push_policy, params, nested=False)


# -- declarations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reach", "push"])
def test_declarations(envs, name):
    env = envs[name]
    fam = dicp_envs.family(name)
    assert (env.codec, env.has_oracle, env.observation_is_state) == ("continuous", False, False)
    assert (env.obs_dim, env.action_dim, env.horizon) == (11, 4, 100)
    space = env.action_space(env.default_params)
    assert space.shape == (4,) and float(space.low) == -1.0 and float(space.high) == 1.0
    assert env.storage_dtypes() == {"obs": np.float32, "action": np.float32,
                                    "reward": np.float32, "done": np.bool_}
    assert (fam.n_transit, fam.plan_depth, fam.source) == (1000, 1, "gaussian_ppo")
    assert fam.source_settings["gaussian_ppo"]["steps_per_stream"] == 10000


# -- tasks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reach", "push"])
def test_tasks_drawn_fixed_and_split_disjoint(envs, name):
    env = envs[name]
    tasks = np.asarray(env.task_list())
    assert tasks.shape == (N_TASKS, env.TASK_DIM) and len(np.unique(tasks, axis=0)) == N_TASKS
    fresh = np.stack([env.draw_block(np.random.default_rng(b), TASK_BLOCK) for b in (0, 1)])
    np.testing.assert_array_equal(tasks[: 2 * TASK_BLOCK], fresh.reshape(-1, env.TASK_DIM)
                                  .astype(np.float32))  # block b <- numpy seed b
    train, test = (dicp_envs.split_indices(name, s) for s in ("train", "test"))
    np.testing.assert_array_equal(train, np.arange(50))
    np.testing.assert_array_equal(test, np.arange(50, 100))
    seen = set()
    for seed in range(N_TASKS // (2 * TASK_BLOCK)):
        for split in ("train", "test"):
            idx = set(dicp_envs.split_indices(name, split, seed=seed).tolist())
            assert len(idx) == TASK_BLOCK and not idx & seen
            seen |= idx
    with pytest.raises(ValueError):
        block_splits("train", N_TASKS // (2 * TASK_BLOCK))


def test_task_boxes(reach, push):
    goals = np.asarray(reach.task_list())
    assert (goals >= np.float32(GOAL_LOW)).all() and (goals <= np.float32(GOAL_HIGH)).all()
    tasks = np.asarray(push.task_list())
    assert (tasks[:, :3] >= np.float32(PUSH_GOAL_LOW)).all()
    assert (tasks[:, :3] <= np.float32(PUSH_GOAL_HIGH)).all()
    assert (np.linalg.norm(tasks[:, :2] - tasks[:, 3:], axis=1) >= MIN_GOAL_OBJ - 1e-6).all()


def test_params_for_checks_shape(reach, push):
    assert reach.params_for(np.zeros((7, 3))).goal.shape == (7, 3)
    p = push.params_for(np.zeros((7, 5)))
    assert p.goal.shape == (7, 3) and p.obj_init.shape == (7, 2)
    with pytest.raises(ValueError):
        reach.params_for(np.zeros((7, 5)))
    with pytest.raises(ValueError):
        push.params_for(np.zeros((7, 3)))


# -- reset ----------------------------------------------------------------------------------------
def test_first_observation_depends_on_the_task_only_through_the_object(reach_run, push_run):
    """Reset (vmapped over tasks x streams, each stream its own key) -> the fixed start: the
    hand at HAND_INIT with the gripper open, the puck where the task puts it; the goal is
    not observed, the key changes nothing."""
    start = np.array([*HAND_INIT, 1.0, *OBJ_POS, 1, 0, 0, 0], np.float32)
    _, (obs0, _) = reach_run
    assert obs0.dtype == np.float32 and obs0.shape == (N_TEST, N_STREAMS, 11)
    np.testing.assert_allclose(obs0, np.broadcast_to(start, obs0.shape), atol=1e-7)

    params, (obs0, _) = push_run
    np.testing.assert_array_equal(obs0[:, 0], obs0[:, 1])
    np.testing.assert_allclose(obs0[..., 4:6], np.broadcast_to(
        np.asarray(params.obj_init)[:, None], (N_TEST, N_STREAMS, 2)))
    rest = np.delete(obs0, [4, 5], axis=-1)
    np.testing.assert_allclose(rest, np.broadcast_to(np.delete(start, [4, 5]), rest.shape),
                               atol=1e-7)


# -- rewards on hand-placed states -------------------------------------------------------------
def test_tolerance_long_tail():
    assert float(tolerance(jnp.float32(0.03), 0.05, 0.3)) == 1.0
    assert float(tolerance(jnp.float32(0.05), 0.05, 0.3)) == 1.0
    np.testing.assert_allclose(tolerance(jnp.float32(0.35), 0.05, 0.3), 0.1, rtol=1e-5)
    d = (0.2 - 0.05) / 0.3
    np.testing.assert_allclose(tolerance(jnp.float32(0.2), 0.05, 0.3), 1 / ((3 * d) ** 2 + 1),
                               rtol=1e-5)


def test_reach_reward():
    goal = jnp.array([0.05, 0.85, 0.1])
    margin = float(jnp.linalg.norm(goal - jnp.array(HAND_INIT)))
    r, ok = reach_reward(goal, goal)
    assert float(r) == 10.0 and bool(ok)
    r, ok = reach_reward(goal + jnp.array([0.0, 0.0, 0.049]), goal)
    assert float(r) == 10.0 and bool(ok)
    r, ok = reach_reward(goal + jnp.array([0.0, 0.0, 0.06]), goal)
    assert 9.0 < float(r) < 10.0 and not bool(ok)
    r, ok = reach_reward(jnp.array(HAND_INIT), goal)  # the start: d = (margin - 0.05) / margin
    d = (margin - 0.05) / margin
    np.testing.assert_allclose(r, 10 / ((3 * d) ** 2 + 1), rtol=1e-5)
    assert not bool(ok)
    r, _ = reach_reward(goal + jnp.array([0.0, 0.0, 0.05 + margin]), goal)
    np.testing.assert_allclose(r, 1.0, rtol=1e-4)  # one margin out: value_at_margin 0.1


def test_push_reward():
    goal, start = jnp.array([0.0, 0.85, 0.015]), jnp.array([0.05, 0.65, OBJ_Z])
    hand0 = jnp.array(HAND_INIT)
    r, ok = push_reward(hand0, goal + jnp.array([0.0, 0.0, 0.005]), goal, start)
    assert float(r) == 10.0 and bool(ok)  # the puck on the goal, wherever the hand is
    # at the start: 2 * near, near = tolerance(|hand - puck|, TOUCH, |hand0 - puck0|)
    r, ok = push_reward(hand0, start, goal, start)
    gap = float(jnp.linalg.norm(hand0 - start))
    d = (gap - TOUCH) / gap
    np.testing.assert_allclose(r, 2 / ((3 * d) ** 2 + 1), rtol=1e-5)
    assert not bool(ok)
    # the hand at the puck: 5 + 5 * in_place
    obj = jnp.array([0.0, 0.75, OBJ_Z])
    hand = obj - jnp.array([0.0, 0.035, 0.0])
    r, ok = push_reward(hand, obj, goal, start)
    margin = float(jnp.linalg.norm(start - goal))
    d = (float(jnp.linalg.norm(obj - goal)) - 0.05) / margin
    np.testing.assert_allclose(r, 5 + 5 / ((3 * d) ** 2 + 1), rtol=1e-5)
    assert not bool(ok)
    r, _ = push_reward(hand - jnp.array([0.0, 0.02, 0.0]), obj, goal, start)  # a bit away
    assert float(r) < 2.0


def test_env_reward_reads_the_observation(reach, push):
    """The env's reward hook is the pure function on the observation's slots."""
    goal = jnp.array([0.05, 0.85, 0.1])
    obs = jnp.array([0.05, 0.85, 0.12, 1.0, *OBJ_POS, 1, 0, 0, 0])
    p = reach.params_for(np.asarray(goal)[None])
    r, ok = reach.reward(obs, jax.tree.map(lambda x: x[0], p))
    assert float(r) == float(reach_reward(obs[:3], goal)[0]) == 10.0 and bool(ok)
    task = np.array([0.0, 0.85, 0.015, 0.05, 0.65], np.float32)
    p = jax.tree.map(lambda x: x[0], push.params_for(task[None]))
    obs = jnp.array([0.0, 0.8, 0.02, 1.0, 0.0, 0.84, OBJ_Z, 1, 0, 0, 0])
    r, ok = push.reward(obs, p)
    want = push_reward(obs[:3], obs[4:7], jnp.asarray(task[:3]),
                       jnp.array([0.05, 0.65, OBJ_Z]))
    assert float(r) == float(want[0]) == 10.0 and bool(ok)


# -- rollouts: jit + vmap, episodes, clipping, scripted success ------------------------------------
def check_episode(env, run, n_streams):
    """Shapes, dtypes, 100-step truncated episodes with auto-reset, rewards in [0, 10] and
    equal to the reward of the arrival observation."""
    params, (obs0, (obs, reward, term, trunc, info)) = run
    T, N = HORIZON + 1, N_TEST
    assert obs.shape == (T, N, n_streams, 11) and obs.dtype == np.float32
    assert reward.shape == (T, N, n_streams) and reward.dtype == np.float32
    assert not term.any()  # never terminated
    assert trunc[HORIZON - 1].all() and not np.delete(trunc, HORIZON - 1, axis=0).any()
    final = info["final_observation"]
    np.testing.assert_array_equal(obs[HORIZON - 1], obs0)  # auto-reset to the fixed start
    assert not np.allclose(final[HORIZON - 1], obs0)  # the true s' of the last step
    np.testing.assert_array_equal(np.delete(final, HORIZON - 1, 0), np.delete(obs, HORIZON - 1, 0))
    assert 0.0 <= reward.min() and reward.max() <= 10.0
    p = jax.tree.map(lambda x: x[None, :, None], params)  # [1, N, 1, ...] against [T, N, S]
    want, ok = jax.vmap(jax.vmap(jax.vmap(env.reward)))(
        final, jax.tree.map(lambda x: np.broadcast_to(x, (T, N, n_streams, x.shape[-1])), p))
    np.testing.assert_allclose(reward, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(info["success"], np.asarray(ok, np.float32))


def test_reach_rollout(reach, reach_run):
    check_episode(reach, reach_run, N_STREAMS)
    _, (_, (obs, reward, _, _, info)) = reach_run
    # out-of-range actions are clipped: the twin stream is identical
    np.testing.assert_array_equal(obs[:, :, 0], obs[:, :, 1])
    # the scripted controller reaches every test goal within the episode
    solved = info["success"][:HORIZON].max(axis=0)  # [N, S]
    assert solved.all(), f"{int((solved == 0).sum())} of {solved.size} not reached"


def test_push_rollout(push, push_run):
    check_episode(push, push_run, N_STREAMS)
    params, (obs0, (obs, reward, _, _, info)) = push_run
    np.testing.assert_array_equal(obs[..., 7:], np.broadcast_to([1, 0, 0, 0], obs[..., 7:].shape))
    np.testing.assert_array_equal(obs[..., 6], np.float32(OBJ_Z))  # the puck stays on the table
    np.testing.assert_array_equal(obs[:, :, 0], obs[:, :, 1])  # clipped twin
    # untouched in the first steps (the hand starts 0.2 above the table)
    np.testing.assert_allclose(obs[:10, :, :, 4:6], np.broadcast_to(obs0[..., 4:6],
                                                                      (10, *obs0[..., 4:6].shape)))
    solved = info["success"][:HORIZON].max(axis=0)
    assert solved.all(), f"{int((solved == 0).sum())} of {solved.size} not pushed home"
