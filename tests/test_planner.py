"""Planners: the registry (a toy planner from test code), and the paper's beam search
(oracle world model, tie rule, cached == uncached) with the look-ups beside it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dicp_envs
from dicp_jax import codecs, planning, stages
from dicp_jax.config import ConfigError
from dicp_jax.evaluate import EvalConfig, make_evaluate, make_rollout, one_task
from dicp_jax.methods.ad import agent_from
from dicp_jax.model import DICPTransformer, ModelConfig, init_params, state_token
from dicp_jax.planning import PlanConfig
from dicp_jax.planning.beam import BeamConfig, beam_search
from dicp_jax.planning.world_model import cached, uncached
from dicp_jax.rng import task_keys
from dicp_jax.testing import oracle

FIXED_PREFERENCE = jnp.array([0.3, 2.0, -1.0, 0.5, 1.0])  # policy's top action: 1 (x-1)


def oracle_returns(env, tasks, plan: BeamConfig, episodes: int = 1, zero_reward=False,
                   believed=None, **eval_options):
    """One oracle-planned rollout per task (planning from the first step); the oracle knows
    the dynamics of ``believed`` tasks (default: the true ones)."""
    codec = codecs.for_env(env)
    cfg = EvalConfig(episodes=episodes, planner="beam", plan=plan, plan_start=0,
                     **eval_options)

    def run(task, model_task, key):
        wm = oracle(env, model_task, FIXED_PREFERENCE, zero_reward=zero_reward)
        return one_task(make_rollout(env, agent_from(wm, codec, 4 * env.horizon), codec, cfg,
                                     n_transit=4 * env.horizon))(task, key)

    n = jax.tree.leaves(tasks)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    return jax.jit(jax.vmap(run))(tasks, tasks if believed is None else believed, keys)


def test_oracle_planner_takes_shortest_paths_on_darkroom():
    # 5x5 grid: depth 4 reaches every cell from the centre; K = 5^3 keeps the search exhaustive.
    env, _ = dicp_envs.make("darkroom", grid_size=5, horizon=12)
    tasks = env.params_for(np.asarray(env.task_list()))
    out = oracle_returns(env, tasks, BeamConfig(beam_size=125, depth=4))
    np.testing.assert_array_equal(np.asarray(out.returns[:, 0]),
                                  np.asarray(env.optimal_return(tasks)))


def test_oracle_planner_near_goals_on_paper_darkroom():
    env, _ = dicp_envs.make("darkroom")
    goals = np.array([[4, 4], [5, 4], [4, 2], [6, 5], [2, 3], [3, 6]])
    tasks = env.params_for(goals)
    out = oracle_returns(env, tasks, BeamConfig(beam_size=25, depth=3), episodes=2)
    opt = np.asarray(env.optimal_return(tasks))
    np.testing.assert_array_equal(np.asarray(out.returns), np.stack([opt, opt], 1))


def test_oracle_planner_collects_both_key_to_door_rewards():
    env, _ = dicp_envs.make("dark_key_to_door", grid_size=3, horizon=10)
    tasks = env.params_for(np.asarray(env.task_list()))  # all 81, key == door included
    out = oracle_returns(env, tasks, BeamConfig(beam_size=125, depth=4))
    np.testing.assert_array_equal(np.asarray(out.returns[:, 0]), 2.0)


def test_all_zero_reward_model_follows_the_policy_top_action():
    env, _ = dicp_envs.make("darkroom")
    codec = codecs.for_env(env)
    task = env.params_for(np.array([[8, 8]]))
    task = jax.tree.map(lambda x: x[0], task)
    wm = oracle(env, task, FIXED_PREFERENCE, zero_reward=True)
    cache = wm.init_cache(8)
    tok = state_token(codec, jnp.array([4, 4]), 0.0, True, 0)
    _, entries = wm.decode(tok, (cache,))
    cache = wm.write(cache, entries, tok, jnp.array([0]))
    for greedy in (True,):
        action = beam_search(wm, codec, BeamConfig(beam_size=10, depth=8, greedy=greedy), cache,
                             FIXED_PREFERENCE, jnp.int32(0), jnp.int32(20),
                             jax.random.PRNGKey(1))
        assert int(action) == int(jnp.argmax(FIXED_PREFERENCE))
    # And over whole episodes: with no reward anywhere, beam search is the greedy policy.
    out = oracle_returns(env, env.params_for(np.array([[8, 8]])),
                         BeamConfig(beam_size=10, depth=8), zero_reward=True)
    assert float(out.returns.sum()) == 0.0


@pytest.mark.parametrize("before_reward,memory", [("plan", False), ("explore", True)])
def test_cached_and_uncached_planning_choose_the_same_actions(before_reward, memory):
    env, _ = dicp_envs.make("darkroom")
    codec = codecs.for_env(env)
    # The context never wraps here: past the window, a key/value cache is a sliding-window
    # model (old keys carry their own context) while re-running keeps only the window.
    mcfg = ModelConfig(n_transit=40, width=16, n_layers=2, n_heads=2, mlp=32)
    model = DICPTransformer(mcfg, codec)
    params = init_params(model, jax.random.PRNGKey(3))
    cfg = EvalConfig(episodes=2, planner="beam", plan_start=2, trajectories=True,
                     before_reward=before_reward, reward_memory=memory,
                     plan=BeamConfig(beam_size=4, depth=3, greedy=False))
    task = jax.tree.map(lambda x: x[0], env.params_for(np.array([[6, 3]])))
    key = jax.random.PRNGKey(7)
    runs = [jax.jit(one_task(make_rollout(env, agent_from(wm, codec, mcfg.n_transit), codec,
                                          cfg, mcfg.n_transit)))(task, key)
            for wm in (cached(model, params), uncached(model, params))]
    np.testing.assert_array_equal(np.asarray(runs[0].action), np.asarray(runs[1].action))
    np.testing.assert_array_equal(np.asarray(runs[0].obs), np.asarray(runs[1].obs))


def test_before_reward_policy_acts_with_the_policy_until_a_reward_is_in_context():
    """The greedy policy walks x-1 from the centre (2, 2) of a 5x5 room. It reaches goal
    (0, 2) on its own; from the first reward on, the oracle plan holds the goal (optimal
    return). Goal (3, 2) lies behind it: gated, the planner never takes over (return 0),
    ungated it walks straight there."""
    env, _ = dicp_envs.make("darkroom", grid_size=5, horizon=12)
    tasks = env.params_for(np.array([[0, 2], [3, 2]]))
    plan = BeamConfig(beam_size=25, depth=4)
    opt = np.asarray(env.optimal_return(tasks))
    gated = oracle_returns(env, tasks, plan, episodes=2, greedy=True, before_reward="policy")
    np.testing.assert_array_equal(np.asarray(gated.returns), [[opt[0]] * 2, [0, 0]])
    free = oracle_returns(env, tasks, plan, episodes=2, greedy=True)
    np.testing.assert_array_equal(np.asarray(free.returns), np.stack([opt, opt], 1))


def test_explore_finds_every_goal_and_reward_memory_walks_back_to_it():
    """A model that predicts no reward anywhere, so only the context can say where the goal
    is. Exploring towards the cells steps have ended on least often finds each goal of a
    5x5 room within 3 episodes (the start cell included: a reset is no arrival); reward
    memory then holds it from the next episode on. The greedy policy alone only finds the
    goals on its line."""
    env, _ = dicp_envs.make("darkroom", grid_size=5, horizon=12)
    tasks = env.params_for(np.asarray(env.task_list()))
    plan = BeamConfig(beam_size=125, depth=4)  # exhaustive to depth 3
    opt = np.asarray(env.optimal_return(tasks))
    returns = np.asarray(oracle_returns(env, tasks, plan, episodes=4, zero_reward=True,
                                        greedy=True, before_reward="explore",
                                        reward_memory=True).returns)
    found = returns > 0
    assert found[:, :3].any(1).all(), np.flatnonzero(~found[:, :3].any(1))
    first = found.argmax(1)
    for i in range(len(opt)):
        np.testing.assert_array_equal(returns[i, first[i] + 1:], opt[i], err_msg=f"goal {i}")
    policy = np.asarray(oracle_returns(env, tasks, plan, episodes=4, zero_reward=True,
                                       greedy=True, before_reward="policy",
                                       reward_memory=True).returns)
    assert (policy > 0).any(1).sum() <= 3  # the x-1 line from the centre: (2,2), (1,2), (0,2)


def test_reward_memory_overrules_a_false_alarm_on_a_visited_cell():
    """The oracle believes the goal is at (2, 0); it is at (4, 4). Without memory the planner
    walks to the false goal and stays there in every episode; with it, the first unrewarded
    arrival overrules the alarm."""
    env, _ = dicp_envs.make("darkroom", grid_size=5, horizon=12)
    tasks, believed = env.params_for(np.array([[4, 4]])), env.params_for(np.array([[2, 0]]))

    def cells(memory: bool) -> np.ndarray:
        out = oracle_returns(env, tasks, BeamConfig(beam_size=25, depth=4), episodes=3,
                             greedy=True, believed=believed, trajectories=True,
                             reward_memory=memory)
        return np.asarray(out.obs[0]).reshape(3, env.horizon, 2)  # cell before each step

    np.testing.assert_array_equal(cells(False)[:, -1], [[2, 0]] * 3)  # held every episode
    held = (cells(True) == [2, 0]).all(-1)  # [episode, step]
    assert held[0].any() and not held[:, -1].any(), held  # visited once, never held


def test_reward_memory_is_refused_where_the_observation_hides_state():
    env, _ = dicp_envs.make("dark_key_to_door", grid_size=3, horizon=10)
    codec = codecs.for_env(env)
    task = jax.tree.map(lambda x: x[0], env.params_for(np.asarray(env.task_list()[:1])))
    cfg = EvalConfig(reward_memory=True)
    with pytest.raises(ConfigError, match="reward_memory"):
        make_rollout(env, agent_from(oracle(env, task, FIXED_PREFERENCE), codec, 8), codec, cfg,
                     n_transit=8)


@pytest.fixture
def constant_planner():
    """A toy planner, "always action k", registered from test code alone."""

    @dataclasses.dataclass(frozen=True)
    class ConstantConfig(PlanConfig):
        action: int = 0

    def make(wm, codec, cfg):
        return lambda now, key: jnp.asarray(cfg.action, codec.action.dtype)

    planning.register(planning.Planner("constant", ConstantConfig, make, "always one action"))
    yield ConstantConfig
    planning.unregister("constant")


def test_a_planner_registered_from_test_code_runs_in_the_meta_test(constant_planner):
    """A planner is a config, a ``make`` and a registry line: "always action k", registered
    from here, is configured by key like the built-in ones and acts in the one-jit meta-test
    from ``plan_start`` on."""
    assert "constant" in stages.PLANNERS  # experiment rows may name it
    cfg = stages.eval_config("darkroom", {"episodes": 2, "plan_start": 3, "action": "2",
                                          "trajectories": True}, "constant")
    assert cfg.plan == constant_planner(action=2)
    with pytest.raises(ConfigError, match="configure planner"):  # not a key of beam's config
        stages.eval_config("darkroom", {"action": 2}, "beam")
    with pytest.raises(ConfigError, match="look-ups"):  # it imagines nothing to score
        stages.eval_config("darkroom", {"reward_memory": True}, "constant")
    env, _ = dicp_envs.make("darkroom")
    codec = codecs.for_env(env)
    mcfg = ModelConfig(n_transit=8, width=16, n_layers=2, n_heads=2, mlp=32)
    model = DICPTransformer(mcfg, codec)
    agent = lambda p: agent_from(cached(model, p), codec, mcfg.n_transit)
    evaluate = make_evaluate(env, agent, codec, cfg, mcfg.n_transit)
    idx = np.array([0, 40])
    out = evaluate(init_params(model, jax.random.PRNGKey(0)),
                   env.params_for(np.asarray(env.task_list())[idx]),
                   task_keys(jax.random.PRNGKey(1), idx))
    assert out.action.shape == (2, 2 * env.horizon)
    assert (np.asarray(out.action)[:, 3:] == 2).all()
