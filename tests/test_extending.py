"""Extending means a new file plus a registry line: a toy task family (a 1-D corridor,
written here from scratch) and a toy imitation method, registered from test code alone,
run through collect -> train -> meta-test with the library's own functions."""

from __future__ import annotations

import types
from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import dicp_envs
from dicp_envs.base import TaskEnv
from dicp_jax import methods, stages
from dicp_jax.collect import collect_dataset
from dicp_jax.evaluate import evaluate_run
from dicp_jax.methods import ad
from dicp_jax.model import ModelConfig
from dicp_jax.sources.ppo import paper_config
from dicp_jax.train import TrainConfig, load_trained, train

pytestmark = pytest.mark.xdist_group("extending")


@struct.dataclass
class CorridorState:
    pos: chex.Array  # int32[1]
    time: chex.Array  # int32[]


@struct.dataclass
class CorridorParams:
    goal: chex.Array  # int32[1]: the task


class Corridor(TaskEnv, environment.Environment):
    """Walk a line of ``length`` cells from cell 0 (actions: left, stay, right); reward 1
    on every step that ends on the invisible goal cell."""

    codec = "grid"  # a 1-D grid: the grid codec handles any number of coordinates
    has_oracle = True
    observation_is_state = True
    reward_of_arrival = True
    length, horizon, obs_dim, num_actions = 6, 8, 1, 3

    @property
    def grid_size(self) -> int:
        return self.length

    @property
    def default_params(self) -> CorridorParams:
        return CorridorParams(goal=jnp.array([self.length - 1], jnp.int32))

    def reset_env(self, key, params):
        state = CorridorState(pos=jnp.zeros((1,), jnp.int32), time=jnp.int32(0))
        return state.pos, state

    def step_env(self, key, state, action, params):
        pos = jnp.clip(state.pos + jnp.clip(action, 0, 2) - 1, 0, self.length - 1)
        reward = jnp.all(pos == params.goal).astype(jnp.float32)
        return pos, CorridorState(pos, state.time + 1), reward, jnp.array(False), {}

    def is_truncated(self, state, params):
        return state.time >= self.horizon

    def state_from_obs(self, obs):
        return CorridorState(pos=jnp.asarray(obs, jnp.int32), time=jnp.int32(0))

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params=None):
        return spaces.Box(0, self.length - 1, (1,), jnp.int32)

    def task_list(self) -> list[tuple[int, ...]]:
        return [(g,) for g in range(self.length)]

    def params_for(self, tasks: Any) -> CorridorParams:
        return CorridorParams(goal=jnp.asarray(np.asarray(tasks, np.int32).reshape(-1, 1)))

    def optimal_return(self, params):
        return jnp.minimum(self.horizon, self.horizon + 1 - params.goal[..., 0]).astype(
            jnp.float32)

    def optimal_action(self, state, params):
        return (jnp.sign(params.goal[0] - state.pos[0]) + 1).astype(jnp.int32)


def double_imitation_loss(*args, **kwargs):
    """A toy method: AD's layout and loss, with the imitation term counted twice."""
    total, metrics = ad.loss(*args, **kwargs)
    return total + metrics["action_loss"], metrics


TOY_METHOD = types.SimpleNamespace(
    NAME="toy_ad", LAYOUT="ad", make_model=ad.make_model, init_params=ad.init_params,
    check_config=ad.check_config, prepare_data=ad.prepare_data, window=ad.window,
    loss=double_imitation_loss, make_agent=ad.make_agent)


@pytest.fixture
def registered():
    dicp_envs.register("corridor", Corridor, split_seed=0, train_ratio=0.5, n_transit=8,
                       plan_depth=3,
                       source_settings={"ppo": dict(n_steps=8, minibatch_size=16, n_epochs=2)})
    methods.register(TOY_METHOD)
    yield
    dicp_envs.unregister("corridor")
    methods.unregister("toy_ad")


def test_toy_family_and_method_run_end_to_end(tmp_path, registered):
    env = dicp_envs.make("corridor")[0]
    cfg = paper_config("corridor", n_streams=4, steps_per_stream=48)
    meta = collect_dataset("corridor", tmp_path / "data", cfg, split="all")
    assert sorted(meta["task_index"]) == list(range(6))
    train_cfg = TrainConfig(method="toy_ad", steps=4, batch_size=2, warmup_steps=1,
                            steps_per_call=2, eval_every=4, eval_windows=4, ckpt_every=4)
    model_cfg = ModelConfig(n_transit=8, width=16, n_layers=1, n_heads=2, mlp=32)
    val = train("corridor", tmp_path / "data", tmp_path / "run", train_cfg, model_cfg)
    assert 0.0 <= val["action_acc"] <= 1.0 and val["cf_false_alarm"] is not None
    trained = load_trained(tmp_path / "run")
    assert trained.train_cfg.method == "toy_ad" and trained.codec.obs.head_size == 6
    test = dicp_envs.split_indices("corridor", "test")
    optimal = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[test])))
    for planner, settings in (("policy", {}), ("beam", {"beam_size": 2, "depth": 2,
                                                        "plan_start": 0})):
        eval_cfg = stages.eval_config("corridor", {"episodes": 2, **settings}, planner)
        returns = np.asarray(evaluate_run(trained, test, eval_cfg).returns)
        assert returns.shape == (len(test), 2)
        assert np.all((returns >= 0) & (returns <= optimal[:, None]))
