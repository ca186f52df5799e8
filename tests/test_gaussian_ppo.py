"""Gaussian PPO (SB3 semantics for Box actions): its distribution against closed forms, what
is recorded versus what is trained on, grouping-independence, and learning a toy task."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import dicp_envs
from dicp_envs.base import TaskEnv
from dicp_jax import collect, sources
from dicp_jax.config import ConfigError, from_dict, to_dict
from dicp_jax.history import load_history
from dicp_jax.sources import gaussian_ppo as gp

pytestmark = pytest.mark.xdist_group("gaussian_ppo")


# -- a toy continuous task family ---------------------------------------------------------------
@struct.dataclass
class PointState:
    pos: chex.Array  # float32[2]
    time: chex.Array  # int32[]


@struct.dataclass
class PointParams:
    goal: chex.Array  # float32[2]: the task, hidden from the observation


class PointGoal(TaskEnv, environment.Environment):
    """A point in the unit square starting at the origin, moved by ``STEP * a`` with
    ``a in [-1, 1]^2``; reward ``-|pos - goal|`` every step; episodes end at the horizon.
    Tasks are integer ids (collection stores task tuples as int32): goal ``i`` lies at
    angle ``2 pi i / N_GOALS`` on a circle of radius ``RADIUS``."""

    codec = "continuous"
    horizon, obs_dim, action_dim = 20, 2, 2
    STEP, RADIUS, N_GOALS = 0.1, 0.6, 8

    def storage_dtypes(self) -> dict[str, Any]:
        return {"obs": np.float32, "action": np.float32, "reward": np.float32,
                "done": np.bool_}

    @property
    def default_params(self) -> PointParams:
        return self.params_for(np.array([[0]]))

    def reset_env(self, key, params):
        state = PointState(pos=jnp.zeros((2,), jnp.float32), time=jnp.int32(0))
        return state.pos, state

    def step_env(self, key, state, action, params):
        pos = jnp.clip(state.pos + self.STEP * jnp.clip(action, -1.0, 1.0), -1.0, 1.0)
        reward = -jnp.linalg.norm(pos - params.goal)
        return pos, PointState(pos, state.time + 1), reward, jnp.array(False), {}

    def is_truncated(self, state, params):
        return state.time >= self.horizon

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def observation_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def task_list(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(self.N_GOALS)]

    def params_for(self, tasks: Any) -> PointParams:
        angle = 2 * np.pi * np.asarray(tasks, np.float64).reshape(-1) / self.N_GOALS
        goal = self.RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1)
        return PointParams(goal=jnp.asarray(goal, jnp.float32))


TINY = gp.GaussianPPOConfig(n_streams=4, steps_per_stream=40, n_steps=20, minibatch_size=20,
                            n_epochs=2)
# one compiled initialiser for the unit tests (eager, each layer's loop compiles on its own)
init_params = jax.jit(gp.init_params, static_argnums=(1, 2, 3))


@pytest.fixture(scope="module")
def env():
    return PointGoal()


@pytest.fixture(scope="module")
def tiny_runs(env):
    """Collections of TINY that share one compiled program (XLA CPU compiles dominate)."""
    return {"alone": collect.collect(env, np.array([2]), TINY),
            "reversed": collect.collect(env, np.array([3, 2, 1, 0]), TINY)}


# -- the distribution -----------------------------------------------------------------------------
def test_log_prob_and_entropy_match_closed_forms():
    rng = np.random.default_rng(0)
    mean, a = rng.normal(size=(5, 3)), 2.0 * rng.normal(size=(5, 3))
    log_std = rng.normal(size=3) * 0.5
    std = np.exp(log_std)
    # product of 1-D normal densities, and the entropy of a diagonal Gaussian
    dens = np.prod(np.exp(-0.5 * ((a - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)), -1)
    got = gp.log_prob(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32),
                      jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(got, np.log(dens), rtol=1e-5, atol=1e-5)
    want_h = 0.5 * np.log(np.prod(2 * math.pi * math.e * std**2))
    np.testing.assert_allclose(gp.entropy(jnp.asarray(log_std, jnp.float32)), want_h, rtol=1e-5)


def test_init_matches_sb3_policy():
    p = init_params(jax.random.PRNGKey(0), 2, 4, TINY)
    assert [w.shape for w, _ in p["pi"]] == [(2, 64), (64, 64), (64, 4)]
    assert [w.shape for w, _ in p["vf"]] == [(2, 64), (64, 64), (64, 1)]
    assert np.array_equal(p["log_std"], np.zeros(4)) and p["log_std"].dtype == jnp.float32
    assert np.abs(np.asarray(p["pi"][2][0])).max() < 0.02  # mean head gain 0.01
    assert all(np.all(np.asarray(b) == 0) for _, b in p["pi"] + p["vf"])


def test_act_keeps_the_unclipped_sample_for_the_log_prob():
    p = init_params(jax.random.PRNGKey(0), 2, 4, TINY)
    p = {**p, "log_std": jnp.full((4,), 0.7)}  # wide: many samples fall outside [-1, 1]
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, 2))
    low, high = -jnp.ones(4), jnp.ones(4)
    sampled, clipped, logp = gp.act(p, obs, jax.random.PRNGKey(2), low, high)
    assert np.abs(sampled).max() > 1.5 and np.abs(clipped).max() <= 1.0
    np.testing.assert_array_equal(clipped, np.clip(sampled, -1.0, 1.0))
    want = gp.log_prob(gp.action_mean(p, obs), p["log_std"], sampled)
    np.testing.assert_array_equal(logp, want)


def test_history_records_the_sample_and_the_env_acts_clipped(env, tiny_runs):
    """``History.action`` is the unclipped sample (as DICP's callback stored it) while the
    env moved by the clipped one; rewards are the env's (no bootstrap added), ``next_obs``
    is the true s' and episodes end at the horizon."""
    h, rets = tiny_runs["reversed"]
    assert h.action.shape == (4, 4, 40, 2) and h.action.dtype == np.float32
    assert h.obs.shape == h.next_obs.shape == (4, 4, 40, 2)
    assert np.abs(h.action).max() > 1.0  # unclipped samples are recorded
    moved = (h.next_obs - h.obs) / PointGoal.STEP
    inside = np.all(np.abs(h.next_obs) < 1.0, -1)  # the position bound did not bind
    np.testing.assert_allclose(moved[inside], np.clip(h.action, -1, 1)[inside], atol=1e-4)
    goal = np.asarray(env.params_for(np.array([3, 2, 1, 0])).goal)[:, None, None]
    np.testing.assert_allclose(h.reward, -np.linalg.norm(h.next_obs - goal, axis=-1),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(h.done[0, 0], (np.arange(40) % 20) == 19)
    inside_ep = ~h.done[..., :-1]
    assert np.array_equal(h.obs[:, :, 1:][inside_ep], h.next_obs[:, :, :-1][inside_ep])
    assert np.all(h.obs[:, :, 20] == 0)  # the stream restarts at the origin
    np.testing.assert_allclose(rets[:, 0], h.reward[:, :, :20].sum(-1).mean(1), rtol=1e-5)


def test_a_task_history_does_not_depend_on_its_chunk(tiny_runs):
    """Alone (padded to a block) or second of a block in a chunk of four, reversed: the
    same bits (one compiled program; the block size is fixed, as collection records it)."""
    (alone, r_alone), (group, r_group) = tiny_runs["alone"], tiny_runs["reversed"]
    assert all(np.array_equal(a[0], b[1]) for a, b in zip(alone, group, strict=True))
    assert np.array_equal(r_alone[0], r_group[1])
    assert not np.array_equal(group.action[0], group.action[1])  # tasks get their own keys


@pytest.fixture
def point_family():
    dicp_envs.register("point_goal", PointGoal, source=gp.NAME, split_seed=0,
                       train_ratio=0.5, n_transit=40, plan_depth=3,
                       source_settings={gp.NAME: dict(n_streams=4, n_steps=20,
                                                      minibatch_size=20, n_epochs=2)})
    yield "point_goal"
    dicp_envs.unregister("point_goal")


def test_paper_config_and_registry(point_family):
    cfg = gp.GaussianPPOConfig()  # Table 3 (Meta-World): 100 streams x 10K steps, 1M a task
    assert (cfg.n_streams * cfg.steps_per_stream, cfg.n_updates, cfg.n_minibatches,
            cfg.n_epochs, cfg.lr) == (1_000_000, 100, 50, 20, 3e-4)
    assert gp.paper_config(point_family, steps_per_stream=40) == TINY
    with pytest.raises(ConfigError, match="no paper Gaussian PPO settings"):
        gp.paper_config("darkroom")
    with pytest.raises(ConfigError, match="record_action"):
        gp.paper_config(point_family, record_action="mean")
    assert sources.get("gaussian_ppo") is gp and sources.for_config(TINY) is gp
    assert sources.for_config(sources.get("ppo").Config()) is sources.get("ppo")
    assert from_dict(gp.Config, to_dict(TINY)) == TINY


def test_dataset_stores_float_actions(tmp_path, point_family, tiny_runs):
    """The family's dataset (float actions ``[S, T, action_dim]``) round-trips, equal to the
    histories collected without it (the compiled TINY program is reused)."""
    meta = collect.collect_dataset(point_family, tmp_path / "d", TINY, task_index=[1, 2])
    assert meta["source"] == gp.NAME and meta["shapes"]["action"] == [4, 40, 2]
    h, dm = load_history(tmp_path / "d", env_name=point_family, task_index=[2, 1])
    assert dm.source_cfg() == TINY and h.action.dtype == np.float32
    ref, _ = tiny_runs["reversed"]  # tasks 3, 2, 1, 0
    assert all(np.array_equal(a, b[1:3]) for a, b in zip(h, ref, strict=True))


def test_learns_the_toy_task(env):
    """CI-sized run (16 streams x 20 episodes) on two goals: the mean episode return climbs
    from a random walk's towards the optimum. Recording the clipped action here: the env
    moved by exactly the recorded action."""
    cfg = gp.GaussianPPOConfig(n_streams=16, steps_per_stream=400, n_steps=20,
                               minibatch_size=80, n_epochs=10, record_action="clipped")
    hist, rets = collect.collect(env, np.array([0, 3]), cfg)  # rets [2 tasks, 20 episodes]
    first, last = rets[:, :3].mean(), rets[:, -3:].mean()
    assert last > first + 5.0 and last > -6.0, rets.round(1)
    assert np.abs(hist.action).max() <= 1.0
    moved = (hist.next_obs - hist.obs) / PointGoal.STEP
    inside = np.all(np.abs(hist.next_obs) < 1.0, -1)
    np.testing.assert_allclose(moved[inside], hist.action[inside], atol=1e-4)


# The paper's shapes (100 streams, n_steps 100, minibatch 200; 4 of its 20 epochs, to fit
# the suite) for two updates: the second rollout's actions carry any rounding difference
# of the first update.
LAYOUTS = textwrap.dedent("""
    import importlib.util, sys, numpy as np, jax
    from dicp_jax import collect
    from dicp_jax.sources.gaussian_ppo import GaussianPPOConfig
    spec = importlib.util.spec_from_file_location("toy", sys.argv[1])
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    env, cfg = toy.PointGoal(), GaussianPPOConfig(steps_per_stream=200, n_epochs=4)
    idx, dev = np.arange(6), jax.devices()
    assert len(dev) == 4
    runs = {"1 device": (idx, collect.collect(env, idx, cfg, devices=dev[:1])),
            "4 devices, reversed": (idx[::-1], collect.collect(env, idx[::-1], cfg,
                                                                devices=dev))}
    np.savez(sys.argv[2], **{f"{k}|{i}": a for k, (order, (h, r)) in runs.items()
                             for i, a in enumerate((*h, r, order))})
""")


@pytest.mark.devices
def test_four_devices_equal_one(tmp_path):
    """A task's history is the same on 1 device as on 4 (each device its own program),
    in another position of another chunk."""
    out = str(tmp_path / "runs.npz")
    env_vars = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, "-c", LAYOUTS, __file__, out], env=env_vars, check=True,
                   timeout=600, cwd=Path(__file__).resolve().parents[1])
    got = np.load(out)
    ref = {int(t): row for row, t in enumerate(got["1 device|6"])}
    for row, task in enumerate(got["4 devices, reversed|6"]):
        for i in range(6):  # obs, action, reward, next_obs, done, episode returns
            assert np.array_equal(got[f"4 devices, reversed|{i}"][row],
                                  got[f"1 device|{i}"][ref[int(task)]]), (int(task), i)
    assert got["1 device|5"][:, -1].mean() > got["1 device|5"][:, 0].mean()  # it learns
