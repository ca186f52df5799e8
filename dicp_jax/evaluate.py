"""The meta-test: env + model + planner in ONE jitted ``lax.scan`` over steps, vmapped over tasks.

No parameter updates: the model acts from its in-context history, a sliding window of the
last ``n_transit`` transitions kept in a ring-buffer cache of ``2 * n_transit`` token slots
(across episode boundaries). Each real step appends a state token, picks an action (policy
head, or beam search with the in-context world model), appends the action token, and steps
the env inside the same compiled function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dicp_jax.config import ConfigError
from dicp_jax.data import observation_is_state
from dicp_jax.model import token_pos
from dicp_jax.planner import (
    Context,
    PlanConfig,
    action_token,
    beam_search,
    empty_context,
    remember,
    state_token,
)
from dicp_jax.rng import task_keys
from dicp_jax.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    episodes: int = 50
    planner: Literal["policy", "beam"] = "beam"
    greedy: bool = False  # policy mode: argmax instead of sampling from the imitation head
    plan: PlanConfig = PlanConfig()
    plan_start: int | None = None  # real transitions in context before planning (None: n_transit)
    # While the real context holds no rewarded transition: "plan" on predicted rewards (the
    # paper), act with the imitation "policy" (with rewards unseen, the predictions carry no
    # evidence, and planning towards their false alarms replaced the imitated exploration),
    # or "explore": plan towards the observations the context has arrived at least often.
    before_reward: Literal["plan", "policy", "explore"] = "plan"
    trajectories: bool = False  # also return per-step observations, actions and rewards

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        if self.planner not in ("policy", "beam"):
            raise ConfigError(f"planner must be 'policy' or 'beam', got {self.planner!r}")
        if self.before_reward not in ("plan", "policy", "explore"):
            raise ConfigError("before_reward must be 'plan', 'policy' or 'explore', "
                              f"got {self.before_reward!r}")
        if self.plan_start is not None and self.plan_start < 0:
            raise ConfigError(f"plan_start must be >= 0 or None, got {self.plan_start}")
        if not isinstance(self.plan, PlanConfig):
            raise ConfigError(f"plan must be a PlanConfig, got {self.plan!r}")
        self.plan.validate()


class Rollout(NamedTuple):
    returns: jax.Array  # float32 [E]: return of each meta-test episode
    obs: jax.Array | None = None  # [E * H, obs_dim]
    action: jax.Array | None = None  # [E * H]
    reward: jax.Array | None = None  # [E * H]


class Carry(NamedTuple):
    env_state: Any
    obs: jax.Array
    prev_reward: jax.Array
    first: jax.Array
    step: jax.Array
    last_reward_step: jax.Array  # step of the latest rewarded transition (-n_transit - 1: none)
    context: Context  # the last n_transit + 1 state tokens' observations and arrival rewards
    cache: Any
    key: jax.Array


def check_env(env: Any, cfg: EvalConfig) -> None:
    """Refuse options the env cannot support (called before any collection or training)."""
    if cfg.planner == "beam" and cfg.plan.reward_memory and not observation_is_state(env):
        raise ConfigError(
            f"reward_memory assumes the observation is the state (a reward is the arrival's), "
            f"which {type(env).__name__} does not satisfy (e.g. a hidden key); turn it off")


def make_rollout(env: Any, wm: WorldModel, codec: Any, cfg: EvalConfig,
                 n_transit: int) -> Callable[[Any, jax.Array], Rollout]:
    """One task's meta-test: ``rollout(env_params, key) -> Rollout`` (pure, vmappable)."""
    check_env(env, cfg)
    length = 2 * n_transit
    plan_start = n_transit if cfg.plan_start is None else cfg.plan_start
    n_steps = cfg.episodes * env.horizon

    def act(carry: Carry, key: jax.Array) -> tuple[Carry, jax.Array]:
        tok = state_token(carry.obs, carry.prev_reward, carry.first, carry.step)
        heads, entries = wm.decode(tok, (carry.cache,))
        cache = wm.write(carry.cache, entries, tok, token_pos(tok) % length)
        logits = heads.action_logits[0]
        key_policy, key_plan = jax.random.split(key)
        context = remember(carry.context, carry.step % (n_transit + 1), carry.obs,
                           carry.prev_reward, carry.first)
        if cfg.greedy:
            action = jnp.argmax(logits).astype(jnp.int32)
        else:
            action = jax.random.categorical(key_policy, logits).astype(jnp.int32)
        if cfg.planner == "beam":
            steps_left = env.horizon - carry.env_state.time
            # the context holds steps step - n_transit .. step - 1
            rewarded = carry.last_reward_step >= carry.step - n_transit
            explore = (cfg.before_reward == "explore") & ~rewarded
            planned = beam_search(wm, codec, cfg.plan, cache, logits, carry.step, steps_left,
                                  key_plan, context, explore)
            plan = carry.step >= plan_start
            if cfg.before_reward == "policy":
                plan &= rewarded
            action = jnp.where(plan, planned, action)
        tok = action_token(codec.obs_dim, action, carry.step)
        _, entries = wm.decode(tok, (cache,))
        cache = wm.write(cache, entries, tok, token_pos(tok) % length)
        return carry._replace(cache=cache, context=context), action

    def step(carry: Carry, _: None, params: Any):
        key, key_act, key_env = jax.random.split(carry.key, 3)
        carry, action = act(carry._replace(key=key), key_act)
        obs, env_state, reward, terminated, truncated, _ = env.step(
            key_env, carry.env_state, action, params)
        done = terminated | truncated
        last_reward_step = jnp.where(reward > 0, carry.step, carry.last_reward_step)
        new = carry._replace(env_state=env_state, obs=obs, prev_reward=reward.astype(jnp.float32),
                             first=done, step=carry.step + 1, last_reward_step=last_reward_step)
        return new, (carry.obs, action, reward)

    def rollout(params: Any, key: jax.Array) -> Rollout:
        key_reset, key = jax.random.split(key)
        obs, env_state = env.reset(key_reset, params)
        carry = Carry(env_state, obs, jnp.float32(0.0), jnp.array(True), jnp.int32(0),
                      jnp.int32(-n_transit - 1), empty_context(n_transit + 1, codec.obs_dim),
                      wm.init_cache(length), key)
        _, (obs_seq, actions, rewards) = jax.lax.scan(
            lambda c, x: step(c, x, params), carry, None, length=n_steps)
        # Episodes end only at the horizon, so they tile the step axis exactly.
        returns = rewards.reshape(cfg.episodes, env.horizon).sum(-1)
        if cfg.trajectories:
            return Rollout(returns, obs_seq, actions, rewards)
        return Rollout(returns)

    return rollout


def make_evaluate(env: Any, wm_factory: Callable[[Any], WorldModel], codec: Any,
                  cfg: EvalConfig, n_transit: int,
                  devices: list | None = None) -> Callable[[Any, Any, jax.Array], Rollout]:
    """``evaluate(model_params, tasks, keys) -> Rollout`` with a leading task axis.

    ``tasks`` is a batched ``EnvParams``; ``keys`` holds one PRNG key per task, so a task's
    result does not depend on the batch it is evaluated in. The task axis is split over
    ``devices`` (default: all) with ``shard_map``, each device running its own tasks with no
    communication, so the task count must be a multiple of the device count
    (``evaluate_run`` pads). One compile per config and task count.
    """
    cfg.validate()
    mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), ("tasks",))

    def per_device(model_params: Any, tasks: Any, keys: jax.Array) -> Rollout:
        rollout = make_rollout(env, wm_factory(model_params), codec, cfg, n_transit)
        return jax.vmap(rollout)(tasks, keys)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("tasks"), P("tasks")),
                                 out_specs=P("tasks"), check_vma=False))


def paper_depth(env: Any) -> int:
    """The paper's depth limit: grid - 1 on Darkroom, 2 (grid - 1) on the longer-horizon envs."""
    return env.grid_size - 1 if env.horizon <= 20 else 2 * (env.grid_size - 1)


def evaluate_run(trained: Any, task_index: Any, cfg: EvalConfig, seed: int = 0,
                 cached_model: bool = True) -> Rollout:
    """Meta-test a trained model (``train.load_trained``) on tasks given by global index."""
    import dicp_envs
    from dicp_jax.world_model import cached, uncached

    env, _ = dicp_envs.make(trained.env_name)
    task_index = np.asarray(task_index, np.int64)
    factory = ((lambda p: cached(trained.model, p)) if cached_model else
               (lambda p: uncached(trained.model, p, trained.codec.obs_dim)))
    devices = jax.devices()
    evaluate = make_evaluate(env, factory, trained.codec, cfg, trained.model_cfg.n_transit,
                             devices)
    # restored params sit on one device: replicate them over the task mesh
    mesh = Mesh(np.asarray(devices), ("tasks",))
    params = jax.device_put(trained.params, NamedSharding(mesh, P()))
    n = len(task_index)
    padded = np.concatenate([task_index, np.repeat(task_index[-1:], -n % len(devices))])
    tasks = env.params_for(np.asarray(env.task_list())[padded])
    out = evaluate(params, tasks, task_keys(jax.random.PRNGKey(seed), padded))
    return jax.tree.map(lambda a: a[:n], jax.device_get(out))
