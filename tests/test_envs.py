"""Darkroom family: jitted envs vs plain-Python references, oracles, batching, validation."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_envs import greedy_action, optimal_return, reference

import dicp_envs

NAMES = ("darkroom", "dark_key_to_door", "darkroom_permuted")
DEFAULTS = {"darkroom": (9, 20), "dark_key_to_door": (9, 50), "darkroom_permuted": (9, 50)}
# (name, grid_size, horizon): the paper's settings plus small non-default ones.
CONFIGS = [(n, *DEFAULTS[n]) for n in NAMES] + [
    ("darkroom", 5, 7), ("dark_key_to_door", 4, 9), ("darkroom_permuted", 3, 6)]
ROLLOUT_LEN = 128  # fixed, so each config compiles once; crosses >= 2 auto-resets everywhere
KEY = jax.random.key(0)


def one(env, task) -> object:
    """Unbatched EnvParams of one task tuple."""
    return jax.tree.map(lambda x: x[0], env.params_for(np.asarray([task])))


@functools.cache
def setup(name: str, grid_size: int, horizon: int):
    """(env, task list, jitted rollout) per config, built once per test process."""
    env, _ = dicp_envs.make(name, grid_size=grid_size, horizon=horizon)

    @jax.jit
    def rollout(params, actions):  # actions int32[T]
        obs0, state = env.reset(KEY, params)

        def body(state, a):
            obs, state, r, term, trunc, info = env.step(KEY, state, a, params)
            return state, (obs, r, term, trunc, info["final_observation"])

        return obs0, jax.lax.scan(body, state, actions)[1]

    return env, env.task_list(), rollout


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
@given(data=st.data())
def test_matches_reference(cfg, data):
    """Same actions (random, out-of-range, or greedy) -> identical transitions, step by step."""
    name, grid_size, horizon = cfg
    env, task_list, rollout = setup(*cfg)
    task = task_list[data.draw(st.integers(0, len(task_list) - 1), label="task index")]
    n = ROLLOUT_LEN
    raw = data.draw(st.lists(st.one_of(st.integers(0, 4), st.integers(-3, 8)),
                             min_size=n, max_size=n), label="random actions")
    p_greedy = data.draw(st.sampled_from([0.0, 0.5, 0.9]), label="greedy share")
    coins = np.random.default_rng(data.draw(st.integers(0, 2**16))).random(n)

    ref = reference(name, task, grid_size, horizon)
    actions, expected = [], []
    for t in range(n):
        a = greedy_action(ref) if coins[t] < p_greedy else raw[t]
        actions.append(a)
        expected.append(ref.step(a))
    obs0, (obs, rew, term, trunc, final) = jax.device_get(
        rollout(one(env, task), jnp.asarray(actions, jnp.int32)))

    assert tuple(obs0) == ref.start
    assert not term.any()
    for t, (e_obs, e_rew, e_done, e_final) in enumerate(expected):
        got = (tuple(obs[t]), float(rew[t]), bool(trunc[t]), tuple(final[t]))
        assert got == (e_obs, e_rew, e_done, e_final), f"step {t}, action {actions[t]}"
    assert obs.dtype == np.int32 and rew.dtype == np.float32


@pytest.mark.parametrize("cfg", CONFIGS + [("darkroom", 9, 5)], ids=lambda c: "-".join(map(str, c)))
def test_oracle_earns_optimal_return_on_every_task(cfg):
    """optimal_action from the start earns exactly optimal_return on all tasks (vmapped)."""
    name, grid_size, horizon = cfg
    env, _ = dicp_envs.make(name, grid_size=grid_size, horizon=horizon)
    tasks = np.asarray(env.task_list())
    params = env.params_for(tasks)

    def episode(params):
        _, state = env.reset(KEY, params)

        def body(state, _):
            a = env.optimal_action(state, params)
            _, state, r, _, _, _ = env.step(KEY, state, a, params)
            return state, r

        return jax.lax.scan(body, state, None, length=horizon)[1].sum()

    got = np.asarray(jax.jit(jax.vmap(episode))(params))
    oracle = np.asarray(jax.vmap(env.optimal_return)(params))
    by_hand = np.array([optimal_return(name, tuple(t), grid_size, horizon) for t in tasks])
    np.testing.assert_array_equal(oracle, by_hand)
    np.testing.assert_array_equal(got, by_hand)
    if (name, grid_size, horizon) == ("darkroom", 9, 20):
        assert got[task_index(tasks, (4, 4))] == 20  # goal on the start cell
        assert got.min() == 13 and got.max() == 20
    if name == "dark_key_to_door" and grid_size == 9:
        assert np.all(got == 2)
        assert got[task_index(tasks, (4, 4, 4, 4))] == 2  # key == door == start
    if name == "darkroom_permuted" and grid_size == 9:
        assert np.all(got == 35)


def task_index(tasks: np.ndarray, task: tuple[int, ...]) -> int:
    return int(np.flatnonzero((tasks == np.asarray(task)).all(1))[0])


@pytest.mark.parametrize("name", NAMES)
def test_vmap_step_over_a_split(name):
    """tasks(name, split) is ONE pytree: vmap(env.step, in_axes=(0, 0, 0, 0)) runs all."""
    env, _ = dicp_envs.make(name)
    params = dicp_envs.tasks(name, "train")
    n = len(dicp_envs.split_indices(name, "train"))
    keys = jax.random.split(KEY, n)
    obs, state = jax.vmap(env.reset)(keys, params)
    actions = jnp.arange(n, dtype=jnp.int32) % env.num_actions
    out = jax.vmap(env.step, in_axes=(0, 0, 0, 0))(keys, state, actions, params)
    assert obs.shape == out[0].shape == (n, env.obs_dim)
    assert out[2].shape == out[3].shape == out[4].shape == (n,)
    assert out[5]["final_observation"].shape == (n, 2)


def test_all_key_to_door_tasks_1000_step_scan():
    """vmap over all 6561 tasks x jit of a 1000-step scan: shapes, resets, <= 2 per episode."""
    env, _ = dicp_envs.make("dark_key_to_door")
    task_arr = dicp_envs.task_array("dark_key_to_door", "all")
    params = dicp_envs.tasks("dark_key_to_door", "all")
    n, steps = len(task_arr), 1000
    step = jax.vmap(env.step, in_axes=(None, 0, 0, 0))

    @jax.jit
    def run(key, params):
        _, state = jax.vmap(env.reset, in_axes=(None, 0))(key, params)

        def body(state, k):
            # Half greedy, half random, so that both rewards are actually collected.
            k_a, k_g = jax.random.split(k)
            rand = jax.random.randint(k_a, (n,), 0, 5)
            greedy = jax.vmap(env.optimal_action)(state, params)
            a = jnp.where(jax.random.bernoulli(k_g, 0.5, (n,)), greedy, rand)
            obs, state, r, term, trunc, _ = step(k, state, a, params)
            return state, (obs, a, r, trunc)

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    obs, actions, rew, trunc = jax.device_get(run(KEY, params))
    assert obs.shape == (steps, n, 2) and rew.shape == trunc.shape == (steps, n)
    assert trunc.sum(0).tolist() == [steps // 50] * n
    assert np.all(trunc[49::50])
    per_episode = rew.reshape(steps // 50, 50, n).sum(1)
    assert per_episode.max() == 2 and per_episode.min() >= 0
    assert (per_episode == 2).mean() > 0.5
    for i in (0, 3280, 6560, 1234):  # spot-check whole trajectories against the reference
        ref = reference("dark_key_to_door", tuple(task_arr[i]), 9, 50)
        for t in range(200):
            e_obs, e_rew, e_done, _ = ref.step(int(actions[t, i]))
            assert (tuple(obs[t, i]), float(rew[t, i]), bool(trunc[t, i])) == (
                e_obs, e_rew, e_done), (i, t)


# -- host-side validation -------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs, match", [
    ({"grid_size": 1}, "grid_size must be >= 2"),
    ({"grid_size": 2.5}, "grid_size must be an integer"),
    ({"horizon": 0}, "horizon must be >= 1"),
    ({"start": (9, 0)}, "start .* outside the 9x9 grid"),
])
def test_bad_construction_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dicp_envs.make(name, **kwargs)


def test_bad_task_arguments():
    dark, _ = dicp_envs.make("darkroom")
    ktd, _ = dicp_envs.make("dark_key_to_door")
    perm, _ = dicp_envs.make("darkroom_permuted")
    cases = [
        (lambda: dark.make_params((9, 0)), r"goal \[9, 0\] lies outside the 9x9 grid"),
        (lambda: dark.make_params((1, -1)), "goal .* outside"),
        (lambda: dark.make_params((1, 2, 3)), r"goal must be a pair \[x, y\]"),
        (lambda: dark.params_for(np.array([[0, 0], [3, 9]])), "goal .* outside"),
        (lambda: ktd.make_params((0, 0), (0, 10)), "door .* outside"),
        (lambda: ktd.make_params((-1, 0), (0, 0)), "key .* outside"),
        (lambda: perm.make_params(120), r"perm_idx must be in \[0, 119\], got 120"),
        (lambda: perm.make_params(-1), r"perm_idx must be in \[0, 119\]"),
        (lambda: perm.params_for(np.array([0, 200])), "perm_idx"),
        (lambda: dicp_envs.make("darkroom_permuted", goal=(9, 9)), "goal .* outside"),
        (lambda: dicp_envs.tasks("darkroom", "validation"), "unknown split"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as err:
        dicp_envs.make("nope")
    for name in NAMES:
        assert name in str(err.value)
    assert "nope" in str(err.value)


def test_env_attributes():
    for name in NAMES:
        env, params = dicp_envs.make(name)
        assert (env.grid_size, env.horizon) == DEFAULTS[name]
        assert env.num_actions == 5 and env.obs_dim == 2
        assert env.action_space(params).n == 5
        obs, _ = env.reset(KEY, params)
        assert obs.dtype == jnp.int32 and env.observation_space(params).contains(obs)


# -- benchmark harness smoke test -------------------------------------------------------------
def test_bench_command_runs_env_benchmark(tmp_path, capsys):
    from dicp_jax.cli import main

    out = tmp_path / "envs.json"
    assert main(["bench", "envs", "--quick", "--steps", "2", "--out", str(out)]) == 0
    assert "| darkroom |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert [r["env"] for r in rows] == [*NAMES, "gymnax CartPole-v1"]
    assert all(r["steps_per_s"] > 0 for r in rows)


def test_bench_command_missing_script(monkeypatch, tmp_path, capsys):
    from dicp_jax.cli import main
    from dicp_jax.commands import bench

    monkeypatch.setattr(bench, "bench_dir", lambda: tmp_path)
    assert main(["bench", "train"]) == 2
    assert "bench_train.py does not exist" in capsys.readouterr().out
