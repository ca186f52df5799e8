"""Real Meta-World ML1 (the optional ``metaworld`` extra, ``dicp_envs.metaworld_ml1`` and
``dicp_jax.host``): the adapter against Meta-World's own envs, the task split, a tiny
collect -> train -> meta-test, and the one-line error when the extra is missing.

The tests that step Meta-World skip cleanly without it (``make test`` in the core venv);
the missing-extra test runs everywhere (it simulates the absence)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import dicp_envs
from dicp_envs import metaworld_ml1 as ml1
from dicp_jax.config import ConfigError

ENV = "metaworld/reach-v3"


@pytest.fixture(scope="module")
def mw():
    return pytest.importorskip("metaworld")


def own_env(mw, task):
    """Meta-World's env exactly as the paper's code builds one (without our model cache)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS["reach-v3"]()
    env.set_task(task)
    return env


def test_registered_names_are_metaworld_v3s(mw):
    assert sorted(ml1.ML1_TASKS) == sorted(mw.ML1.ENV_NAMES)
    assert all(ml1.PREFIX + name in dicp_envs.names() for name in ml1.ML1_TASKS)
    assert dicp_envs.make("metaworld/hammer-v3")[0].obs_dim == 18
    assert dicp_envs.make(ENV)[0].obs_dim == 11


def test_tasks_are_ml1s_fixed_by_seed_and_disjoint(mw):
    env = dicp_envs.make(ENV)[0]
    tasks = np.asarray(env.task_list())
    fresh = mw.ML1("reach-v3", seed=0)  # built again: the same draws
    expected = [ml1.rand_vec(t) for t in (*fresh.train_tasks, *fresh.test_tasks)]
    np.testing.assert_array_equal(tasks, np.asarray(expected))
    train, test = (dicp_envs.split_indices(ENV, s) for s in ("train", "test"))
    assert len(train) == len(test) == 50
    assert not set(train.tolist()) & set(test.tolist())
    # disjoint as tasks, not only as indices: no train goal is a test goal
    assert not {tuple(r) for r in tasks[train]} & {tuple(r) for r in tasks[test]}
    with pytest.raises(ValueError, match="one split"):
        dicp_envs.split_indices(ENV, "test", seed=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_equals_metaworlds_own_envs(mw, workers):
    """Observations, rewards and success of the batched (and process-pool) envs equal
    Meta-World's own env stepped with the same actions, across an episode reset."""
    env = dicp_envs.make(ENV)[0]
    index = [0, 57]  # a train and a test task
    tasks = ml1.ml1_tasks("reach-v3")
    refs = [own_env(mw, tasks[i]) for i in index for _ in range(2)]
    rng = np.random.default_rng(0)
    with env.batch(index, streams=2, workers=workers) as batch:
        got = batch.reset()
        want = np.stack([e.reset()[0] for e in refs])
        np.testing.assert_array_equal(got, want)
        for t in range(130):  # past an episode end: both reset at step 100
            if t == 100:
                np.testing.assert_array_equal(batch.reset(), [e.reset()[0] for e in refs])
            # a mix of in-range and out-of-range actions (Meta-World clips them)
            actions = rng.uniform(-1.5, 1.5, (4, 4))
            obs, reward, success = batch.step(actions)
            outs = [e.step(a) for e, a in zip(refs, actions, strict=True)]
            np.testing.assert_array_equal(obs, np.stack([o[0] for o in outs]))
            np.testing.assert_array_equal(reward, [o[1] for o in outs])
            np.testing.assert_array_equal(success, [o[4]["success"] for o in outs])
    assert env.model_obs(obs).shape == (4, 11)
    np.testing.assert_array_equal(env.model_obs(obs), obs[:, :11].astype(np.float32))


def test_a_scripted_reach_succeeds_and_the_goal_is_hidden(mw):
    """Moving the hand straight to the task's goal (read off ``rand_vec``) succeeds, so
    ``success`` and the rewards are live; the goal slots of the observation are zero."""
    env = dicp_envs.make(ENV)[0]
    goal = np.asarray(env.task_list()[50])[3:6]
    with env.batch([50], workers=0) as batch:
        obs = batch.reset()
        assert np.all(obs[:, 36:] == 0)
        hit = []
        for _ in range(60):
            action = np.clip((goal - obs[0, :3]) * 50, -1, 1)
            obs, reward, success = batch.step(np.append(action, 0.0)[None])
            hit.append(success[0])
    assert max(hit) == 1.0 and reward[0] > 9.0


@pytest.mark.slow
def test_tiny_collect_train_meta_test_end_to_end(mw, tmp_path, monkeypatch):
    from dicp_jax.collect import collect_dataset
    from dicp_jax.evaluate import evaluate_run
    from dicp_jax.history import load_history
    from dicp_jax.host import collect as host_collect
    from dicp_jax.model import ModelConfig
    from dicp_jax.sources import gaussian_ppo
    from dicp_jax.stages import eval_config
    from dicp_jax.train import TrainConfig, load_trained, train

    cfg = gaussian_ppo.paper_config(ENV, n_streams=2, steps_per_stream=200, n_steps=100,
                                    minibatch_size=100, n_epochs=2)
    idx = [0, 1, 50, 51]
    # envs stepped in this process (the worker pool is checked above, and costs a spawn)
    monkeypatch.setattr(host_collect, "default_workers", lambda: 0)
    collect_dataset(ENV, tmp_path / "data", cfg, task_index=idx, chunk_size=2)
    hist, meta = load_history(tmp_path / "data", env_name=ENV)
    assert hist.obs.shape == (4, 2, 200, 11) and hist.action.shape == (4, 2, 200, 4)
    assert meta.episode_returns.shape == (4, 2)
    np.testing.assert_array_equal(np.nonzero(hist.done[0, 0])[0], [99, 199])
    assert np.all((hist.reward >= 0) & (hist.reward <= 10))
    # every episode starts from the task's fixed reset state; s' continues s
    np.testing.assert_array_equal(hist.obs[:, :, 0], hist.obs[:, :, 100])
    np.testing.assert_array_equal(hist.next_obs[:, :, :99], hist.obs[:, :, 1:100])

    model_cfg = ModelConfig(n_transit=20, width=16, n_layers=1, n_heads=2, mlp=32)
    train_cfg = TrainConfig(steps=4, batch_size=2, warmup_steps=1, steps_per_call=2,
                            eval_every=4, eval_windows=4, ckpt_every=4)
    train(ENV, tmp_path / "data", tmp_path / "run", train_cfg, model_cfg)
    trained = load_trained(tmp_path / "run")
    test = [50, 51]
    # the sampled planner from step 0: it plans in each episode's last 49 steps and acts
    # with the policy's sample before them, so both paths of the agent step run
    eval_cfg = eval_config(ENV, {"episodes": 2, "trajectories": True, "plan_start": 0},
                           "sampled")
    out = evaluate_run(trained, test, eval_cfg)
    assert out.returns.shape == out.success.shape == (2, 2)
    # the host loop's rewards are Meta-World's for the actions it took
    task = ml1.ml1_tasks("reach-v3")[51]
    ref = own_env(mw, task)
    rewards = []
    for t, action in enumerate(out.action[1]):
        if t % 100 == 0:
            obs = ref.reset()[0]
            np.testing.assert_allclose(out.obs[1, t], obs[:11], rtol=0, atol=1e-6)
        rewards.append(ref.step(np.asarray(action, np.float64))[1])
    np.testing.assert_allclose(out.reward[1], rewards, rtol=1e-6)
    np.testing.assert_allclose(out.returns[1],
                               np.asarray(rewards).reshape(2, 100).sum(1), rtol=1e-5)


def test_missing_extra_is_one_clear_error(monkeypatch, tmp_path, capsys):
    """Without metaworld (simulated), building tasks raises a ConfigError naming the extra,
    and ``dicp collect`` fails with that one line (exit 2) before writing anything."""
    from dicp_jax.cli import main

    monkeypatch.setitem(sys.modules, "metaworld", None)  # `import metaworld` now fails
    ml1.benchmark.cache_clear()
    env = dicp_envs.make(ENV)[0]  # the family itself needs no metaworld (dicp list)
    assert env.obs_dim == 11 and len(dicp_envs.split_indices(ENV, "test")) == 50
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[metaworld\]'"):
        env.task_list()
    out = tmp_path / "data"
    assert main(["collect", "--env", ENV, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[metaworld]'" in err[0]
    assert not (out / "metadata.json").exists()
    ml1.benchmark.cache_clear()  # the next test rebuilds it with metaworld back
