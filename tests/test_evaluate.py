"""The one-jit meta-test: batch == alone, one compile per config, policy/beam switch."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import dicp_envs
from dicp_jax import codecs
from dicp_jax.config import ConfigError
from dicp_jax.evaluate import EvalConfig, make_evaluate
from dicp_jax.methods.ad import agent_from
from dicp_jax.model import DICPTransformer, ModelConfig, init_params
from dicp_jax.planning import PlanConfig
from dicp_jax.planning.beam import BeamConfig
from dicp_jax.planning.world_model import cached
from dicp_jax.rng import task_keys

MCFG = ModelConfig(n_transit=8, width=16, n_layers=2, n_heads=2, mlp=32)


def _parts(env, planner: str, episodes: int, traces: list | None = None):
    """(env, agent factory, codec, EvalConfig, n_transit) of the tiny test model."""
    codec = codecs.for_env(env)
    model = DICPTransformer(MCFG, codec)
    plan = BeamConfig(beam_size=3, depth=2, greedy=False) if planner == "beam" else PlanConfig()
    cfg = EvalConfig(episodes=episodes, planner=planner, plan_start=4, trajectories=True,
                     plan=plan)

    def factory(p):
        if traces is not None:
            traces.append(1)  # runs once per trace, i.e. once per compile
        return agent_from(cached(model, p), codec, MCFG.n_transit)

    return env, factory, codec, cfg, MCFG.n_transit


def _setup(planner: str, episodes: int = 3):
    env, _ = dicp_envs.make("darkroom")
    params = init_params(DICPTransformer(MCFG, codecs.for_env(env)), jax.random.PRNGKey(0))
    traces = []
    return env, params, make_evaluate(*_parts(env, planner, episodes, traces)), traces


def test_batch_equals_each_task_alone_and_compiles_once():
    env, params, evaluate, traces = _setup("beam")
    idx = np.arange(0, 81, 9)  # 9 goals
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(1), idx)
    batch = evaluate(params, tasks, keys)
    assert batch.returns.shape == (9, 3) and batch.action.shape == (9, 3 * env.horizon)
    for i in (0, 4, 8):
        one = evaluate(params, jax.tree.map(lambda x, i=i: x[i:i + 1], tasks), keys[i:i + 1])
        np.testing.assert_array_equal(np.asarray(one.action[0]), np.asarray(batch.action[i]))
        np.testing.assert_array_equal(np.asarray(one.returns[0]), np.asarray(batch.returns[i]))
    # Same shapes again: no retrace. (A new batch size is a new shape, hence one more.)
    evaluate(params, tasks, task_keys(jax.random.PRNGKey(2), idx))
    assert len(traces) == 2


def _adaptive(env, confidence: float | None):
    e, factory, codec, cfg, n = _parts(env, "beam", 2)
    return make_evaluate(e, factory, codec, dataclasses.replace(cfg, plan_confidence=confidence),
                         n)


def test_adaptive_planning_at_always_plan_is_fixed_planning_and_at_never_the_policy():
    """Threshold 1 (the policy is never certain here): the paper's planning, step for step.
    A threshold below any top-action probability: no step plans, and the actions are the
    policy's (the ``policy`` planner's rollout, same keys)."""
    env, params, fixed, _ = _setup("beam", episodes=2)
    _, _, policy, _ = _setup("policy", episodes=2)
    idx = np.arange(0, 81, 10)
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(1), idx)
    ref = fixed(params, tasks, keys)
    np.testing.assert_array_equal(np.asarray(ref.planned), [[env.horizon - 4, env.horizon]] * 9)
    always = _adaptive(env, 1.0)(params, tasks, keys)
    np.testing.assert_array_equal(np.asarray(always.action), np.asarray(ref.action))
    np.testing.assert_array_equal(np.asarray(always.planned), np.asarray(ref.planned))
    never = _adaptive(env, 1e-3)(params, tasks, keys)
    assert int(np.asarray(never.planned).sum()) == 0
    np.testing.assert_array_equal(np.asarray(never.action),
                                  np.asarray(policy(params, tasks, keys).action))


def test_adaptive_planning_gathers_the_hesitant_tasks_and_each_task_acts_as_alone():
    """A threshold inside the untrained policy's confidences: some steps of some tasks plan.
    The planning slot gathers exactly those tasks, so every task's actions and planned
    counts equal its run alone (where the slot holds it or nothing)."""
    env, params, _, _ = _setup("beam", episodes=2)
    evaluate = _adaptive(env, 0.4)
    idx = np.arange(0, 81, 10)
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(1), idx)
    batch = evaluate(params, tasks, keys)
    planned = np.asarray(batch.planned)
    assert 0 < planned.sum() < 9 * (2 * env.horizon - 4), planned
    assert (planned.sum(-1) < 2 * env.horizon - 4).all()
    for i in (0, 1, 8):
        one = evaluate(params, jax.tree.map(lambda x, i=i: x[i:i + 1], tasks), keys[i:i + 1])
        np.testing.assert_array_equal(np.asarray(one.action[0]), np.asarray(batch.action[i]))
        np.testing.assert_array_equal(np.asarray(one.planned[0]), planned[i])


def test_plan_confidence_is_checked():
    with pytest.raises(ConfigError, match="plan_confidence"):
        EvalConfig(plan_confidence=1.5).validate()


def test_returns_match_rewards_and_envs_semantics():
    env, params, evaluate, _ = _setup("policy", episodes=2)
    tasks = env.params_for(np.array([[4, 5], [0, 0]]))
    out = evaluate(params, tasks, task_keys(jax.random.PRNGKey(3), [0, 1]))
    rewards = np.asarray(out.reward).reshape(2, 2, env.horizon)
    np.testing.assert_allclose(np.asarray(out.returns), rewards.sum(-1))
    obs = np.asarray(out.obs)
    # Every episode starts at the centre; moves are unit steps inside the grid.
    np.testing.assert_array_equal(obs[:, :: env.horizon], 4)
    assert obs.min() >= 0 and obs.max() <= 8
    step = np.abs(np.diff(obs, axis=1)).sum(-1)
    within = np.ones_like(step, bool)
    within[:, env.horizon - 1 :: env.horizon] = False  # resets jump back to the centre
    assert step[within].max() <= 1


@pytest.mark.devices
def test_tasks_sharded_over_four_devices_give_the_same_rollouts():
    code = textwrap.dedent("""
        import jax, numpy as np
        import test_evaluate as te
        from dicp_jax.evaluate import make_evaluate
        from dicp_jax.rng import task_keys
        assert len(jax.devices()) == 4
        env, params, evaluate, _ = te._setup("beam", episodes=2)
        one = make_evaluate(*te._parts(env, "beam", 2), devices=jax.devices()[:1])
        idx = np.arange(0, 80, 10)  # 8 goals: 2 per device
        tasks = env.params_for(np.asarray(env.task_list())[idx])
        keys = task_keys(jax.random.PRNGKey(5), idx)
        a, b = evaluate(params, tasks, keys), one(params, tasks, keys)
        assert len(a.action.sharding.device_set) == 4
        np.testing.assert_array_equal(np.asarray(a.action), np.asarray(b.action))
        np.testing.assert_array_equal(np.asarray(a.returns), np.asarray(b.returns))
        # evaluate_run: params restored onto one device, 7 tasks padded to 8
        from dicp_jax.evaluate import evaluate_run
        from dicp_jax.model import DICPTransformer
        from dicp_jax.train import TrainConfig, TrainedModel
        _, _, codec, cfg, _ = te._parts(env, "beam", 2)
        trained = TrainedModel(DICPTransformer(te.MCFG, codec),
                               jax.device_put(params, jax.devices()[0]), te.MCFG, TrainConfig(),
                               "darkroom", codec)
        c = evaluate_run(trained, idx[:7], cfg, seed=5)
        np.testing.assert_array_equal(c.action, np.asarray(b.action)[:7])
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.getcwd()]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
