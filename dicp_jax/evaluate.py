"""The meta-test: env + model + planner in ONE jitted ``lax.scan`` over real steps.

No parameter updates: the model acts from its in-context history (across episode
boundaries), kept by the method's *agent* (``dicp_jax.methods``) in fixed-size buffers: for
AD a ring-buffer key/value cache of the last ``n_transit`` transitions. Each real step hands
every task's agent its current observation and the transition that led to it, picks the
actions, records them with the agents, and steps the envs inside the same compiled function.

The action is the policy head's (sampled, or its mode with ``greedy``) until the planner is
in charge (``plan_start``, ``before_reward``, and beyond the paper ``plan_confidence``); from
then on it is the action of the planner named by ``EvalConfig.planner``, taken from the
registry (``dicp_jax.planning``), so the rollout knows no planner and a new one needs no
change here. The tasks are vmapped inside each step rather than around the whole scan, so
the search runs only for the tasks the planner is in charge of (``make_act``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dicp_jax import codecs, distributed, methods, planning
from dicp_jax import config as cfglib
from dicp_jax.config import ConfigError
from dicp_jax.methods.base import Agent, Step, TaskInfo, Transition
from dicp_jax.planning import PlanConfig, Situation
from dicp_jax.planning.lookups import (
    Context,
    Lookups,
    check_lookups,
    empty_context,
    make_scorer,
    remember,
)
from dicp_jax.rng import task_keys


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    episodes: int = 50
    planner: str = "beam"  # a registered planner (``dicp_jax.planning.names()``)
    # The planner's own config (its registered type); left at the base ``PlanConfig()``, it
    # becomes the planner's defaults.
    plan: PlanConfig = PlanConfig()
    greedy: bool = False  # the policy's action: argmax instead of a sample from its head
    plan_start: int | None = None  # real transitions in context before planning (None: n_transit)
    # While the real context holds no rewarded transition: "plan" on predicted rewards (the
    # paper), act with the imitation "policy" (with rewards unseen, the predictions carry no
    # evidence, and planning towards their false alarms replaced the imitated exploration),
    # or "explore": plan towards the observations the context has arrived at least often
    # (a look-up beyond the paper, ``planning.lookups``).
    before_reward: Literal["plan", "policy", "explore"] = "plan"
    # Beyond the paper (``planning.lookups``): imagined arrivals at observations the context
    # has arrived at take the reward observed there.
    reward_memory: bool = False
    trajectories: bool = False  # also return per-step observations, actions and rewards
    # The return an agent asks for (IDT's initial return-to-go); None: the family's oracle
    # optimal return where it has one (the paper's code), else 0.
    target_return: float | None = None
    # Beyond the paper (adaptive planning): the planner acts only where the policy's top
    # action has probability below this; elsewhere the policy acts and no search is run.
    # None: wherever the planner is in charge (the paper).
    plan_confidence: float | None = None

    def __post_init__(self) -> None:
        if type(self.plan) is PlanConfig and self.planner in planning.names():
            object.__setattr__(self, "plan", planning.get(self.planner).config())

    @property
    def lookups(self) -> Lookups:
        """The look-ups beyond the paper that this config turns on."""
        return Lookups(explore=self.before_reward == "explore",
                               reward_memory=self.reward_memory)

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        planner = planning.get(self.planner)
        if type(self.plan) is not planner.config:
            raise ConfigError(f"planner {self.planner!r} takes a {planner.config.__name__} "
                              f"as plan, got {self.plan!r}")
        self.plan.validate()
        if self.before_reward not in ("plan", "policy", "explore"):
            raise ConfigError("before_reward must be 'plan', 'policy' or 'explore', "
                              f"got {self.before_reward!r}")
        if self.plan_confidence is not None and not 0.0 < self.plan_confidence <= 1.0:
            raise ConfigError(f"plan_confidence must be in (0, 1] or None, got "
                              f"{self.plan_confidence}")
        if self.plan_start is not None and self.plan_start < 0:
            raise ConfigError(f"plan_start must be >= 0 or None, got {self.plan_start}")
        if self.lookups.on and not planner.uses_scorer:
            raise ConfigError(f"the look-ups (before_reward='explore', reward_memory) score "
                              f"imagined steps; planner {self.planner!r} imagines none: turn "
                              "them off or use a planner that searches (e.g. beam)")


def config_from_dict(data: Mapping[str, Any]) -> EvalConfig:
    """An EvalConfig from its JSON form (``config.to_dict``). The plan's fields are read into
    the named planner's own config type, which the generic ``config.from_dict`` cannot know."""
    data = dict(data)
    plan, name = data.pop("plan", {}), str(data.pop("planner", EvalConfig.planner))
    if not isinstance(plan, Mapping):
        raise ConfigError(f"plan is a nested planner config, not a value: got {plan!r}")
    plan = cfglib.from_dict(planning.get(name).config, dict(plan))
    return cfglib.replace(EvalConfig(planner=name, plan=plan), **data)


class Rollout(NamedTuple):
    returns: jax.Array  # float32 [E]: return of each meta-test episode
    # bool [E]: the episode succeeded at some step (envs that report ``info["success"]``)
    success: jax.Array | None = None
    obs: jax.Array | None = None  # [E * H, obs_dim]
    action: jax.Array | None = None  # [E * H] (or [E * H, action_dim])
    reward: jax.Array | None = None  # [E * H]
    planned: jax.Array | None = None  # int32 [E]: steps of each episode the planner acted on


class Carry(NamedTuple):
    env_state: Any
    now: Step  # the real step about to be acted on
    last_reward_step: jax.Array  # step of the latest rewarded transition (-n_transit - 1: none)
    context: Context  # the last n_transit + 1 arrivals (kept while look-ups are on)
    agent: Any  # the method's agent state (its real context)
    key: jax.Array


# The agent's key is folded out of the rollout's key, so the action and env streams (and AD's
# results) are the same as without it.
AGENT_KEY = 0x1D7


def check_env(env: Any, cfg: EvalConfig) -> None:
    """Refuse options the env cannot support (called before any collection or training)."""
    check_lookups(env, cfg.lookups)
    if cfg.plan_confidence is not None and not hasattr(codecs.for_env(env).action,
                                                       "confidence"):
        raise ConfigError("plan_confidence gates the planner on the policy's top-action "
                          f"probability; {type(env).__name__}'s actions are continuous and "
                          "have none: unset it")


def target_return(env: Any, params: Any, cfg: EvalConfig) -> jax.Array:
    """The return an agent is asked for (IDT's initial return-to-go): the setting, else the
    family's oracle, else 0."""
    if cfg.target_return is not None:
        return jnp.float32(cfg.target_return)
    return (jnp.asarray(env.optimal_return(params), jnp.float32) if env.has_oracle
            else jnp.float32(0.0))


class PlanInput(NamedTuple):
    """What the planner needs of one task's real step (gathered into the planning slot)."""

    cache: Any  # the real context cache, holding the current state token
    logits: jax.Array  # [head_size]: the policy head there
    policy_action: jax.Array
    step: jax.Array  # int32 []
    steps_left: jax.Array  # int32 [] >= 1
    context: Context
    rewarded: jax.Array  # bool []: a rewarded transition is in context
    key: jax.Array


def slot_sizes(n: int, adaptive: bool) -> tuple[int, ...]:
    """The planning slot's capacities for ``n`` tasks, smallest first. Tasks go in or out of
    planning together under ``plan_start`` (every task is at the same step), so fixed
    planning needs "none" or "all"; a per-task gate (``before_reward="policy"``,
    ``plan_confidence``) also gets a quarter and a half, each one more compile of the
    planner."""
    sizes = {0, n}
    if adaptive:
        sizes |= {-(-n // 4), -(-n // 2)}
    return tuple(sorted(sizes))


def make_act(agent: Agent, codec: Any, cfg: EvalConfig, n_transit: int, horizon: int
             ) -> Callable[[Carry, jax.Array], tuple[Carry, jax.Array, jax.Array]]:
    """One real step's decision for a batch of tasks: ``act(carry [B], keys [B]) -> (carry,
    action [B], planned bool [B])`` takes in ``carry.now`` with each agent, picks the policy's
    or the planner's action and commits it (``carry.env_state`` is not read). Shared by the
    one-jit rollout below and the host loop of host-stepped families (``dicp_jax.host``).

    The planner runs only for the tasks it is in charge of: they are gathered into the
    smallest planning slot that holds them (``slot_sizes``; one
    ``lax.switch``, so a step where no task plans costs no search at all), and their
    actions are scattered back. Under ``vmap`` a per-task ``cond`` would run the search for
    every task and select; the slot makes skipped searches actually free."""
    planner = planning.get(cfg.planner)
    plan = planner.make(agent.wm, codec, cfg.plan)
    looks = cfg.lookups
    plan_start = n_transit if cfg.plan_start is None else cfg.plan_start

    def decide(carry: Carry, key: jax.Array) -> tuple[Any, PlanInput, jax.Array]:
        """One task up to the planner: (agent state, planner input, in charge)."""
        now = carry.now
        agent_state, logits, real_cache = agent.query(carry.agent, now)
        key_policy, key_plan = jax.random.split(key)
        if cfg.greedy:
            policy_action = codec.action.mode(logits)
        else:
            policy_action = codec.action.sample(key_policy, logits)
        context = carry.context
        if looks.on:
            context = remember(context, now.step % (n_transit + 1), now.obs, now.prev_reward,
                               now.first)
        # the context holds steps step - n_transit .. step - 1
        rewarded = carry.last_reward_step >= now.step - n_transit
        in_charge = now.step >= plan_start
        if cfg.before_reward == "policy":
            in_charge &= rewarded
        if planner.acts is not None:  # the steps the planner itself acts on
            in_charge &= planner.acts(cfg.plan, horizon - now.episode_step)
        if cfg.plan_confidence is not None:  # beyond the paper: plan where the policy hesitates
            in_charge &= codec.action.confidence(logits) < cfg.plan_confidence
        return agent_state, PlanInput(real_cache, logits, policy_action, now.step,
                                      horizon - now.episode_step, context, rewarded,
                                      key_plan), in_charge

    def plan_one(x: PlanInput) -> jax.Array:
        situation = Situation(cache=x.cache, action_logits=x.logits,
                              policy_action=x.policy_action, step=x.step,
                              steps_left=x.steps_left,
                              scorer=make_scorer(looks, x.context, x.rewarded))
        return plan(situation, x.key)

    def planned_actions(x: PlanInput, in_charge: jax.Array) -> jax.Array:
        n = in_charge.shape[0]
        sizes = slot_sizes(n, cfg.plan_confidence is not None or cfg.before_reward == "policy")
        order = jnp.argsort(~in_charge, stable=True)  # the tasks in charge first

        def branch(size: int) -> Callable[[PlanInput], jax.Array]:
            def run(x: PlanInput) -> jax.Array:
                if size == 0:
                    return x.policy_action
                if size == n:
                    return jax.vmap(plan_one)(x)
                slot = order[:size]
                out = jax.vmap(plan_one)(jax.tree.map(lambda a: a[slot], x))
                return x.policy_action.at[slot].set(out)
            return run

        fits = jnp.searchsorted(jnp.asarray(sizes), in_charge.sum())  # smallest slot that fits
        return jax.lax.switch(fits, [branch(size) for size in sizes], x)

    def act(carry: Carry, keys: jax.Array) -> tuple[Carry, jax.Array, jax.Array]:
        agent_state, x, in_charge = jax.vmap(decide)(carry, keys)
        chex.assert_shape(in_charge, keys.shape[:1])
        planned = planned_actions(x, in_charge)
        mask = in_charge.reshape(in_charge.shape + (1,) * (planned.ndim - 1))
        action = jnp.where(mask, planned, x.policy_action)
        agent_state = jax.vmap(agent.commit)(agent_state, carry.now, action)
        return carry._replace(agent=agent_state, context=x.context), action, in_charge

    return act


def first_carry(agent: Agent, codec: Any, n_transit: int, obs: jax.Array, env_state: Any,
                target: jax.Array, key: jax.Array) -> Carry:
    """A task's carry at its first real step (``obs`` just reset; no transition yet), shared
    by the one-jit rollout and the host loop so both start a task the same way."""
    blank = Transition(obs, jnp.zeros(codec.action.shape, codec.action.dtype),
                       jnp.float32(0.0), obs, jnp.array(False))
    now = Step(obs=obs, prev_reward=jnp.float32(0.0), first=jnp.array(True),
               step=jnp.int32(0), episode_step=jnp.int32(0), last=blank)
    return Carry(env_state, now, jnp.int32(-n_transit - 1),
                 empty_context(n_transit + 1, codec.obs.dim, codec.obs.dtype),
                 agent.init(TaskInfo(target, jax.random.fold_in(key, AGENT_KEY))), key)


def split_step_keys(keys: jax.Array) -> jax.Array:
    """Each task's key [B, 2] -> its (next, act, env) keys, stacked ``[3, B, 2]``: one
    real step's randomness, the same in the one-jit rollout and the host loop."""
    return jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0)


def take_in(carry: Carry, action: jax.Array, obs: jax.Array, reward: jax.Array,
            done: jax.Array, final: jax.Array) -> Carry:
    """One task's carry after ``action``: ``obs`` is the next observation (a reset one when
    ``done``), ``final`` the true last one; shared by the rollout and the host loop."""
    now = carry.now
    last = Transition(now.obs, action, reward, final, done)
    nxt = Step(obs=obs, prev_reward=reward, first=done, step=now.step + 1,
               episode_step=jnp.where(done, 0, now.episode_step + 1), last=last)
    return carry._replace(now=nxt, last_reward_step=jnp.where(
        reward > 0, now.step, carry.last_reward_step))


def make_rollout(env: Any, agent: Agent, codec: Any, cfg: EvalConfig,
                 n_transit: int) -> Callable[[Any, jax.Array], Rollout]:
    """A batch of tasks' meta-test: ``rollout(env_params [B], keys [B]) -> Rollout [B]``
    (pure; one ``lax.scan`` over real steps, the tasks vmapped inside each step so that the
    planner runs only for the tasks it is in charge of, ``make_act``).

    ``agent`` is the method's (``dicp_jax.methods``): it takes in each real step and
    returns the policy head; the planner searches from its real context with its world
    model. A task's results do not depend on the batch it runs in (its own key)."""
    cfg.validate()
    check_env(env, cfg)
    act = make_act(agent, codec, cfg, n_transit, env.horizon)
    n_steps = cfg.episodes * env.horizon
    reports_success: list[bool] = []

    def env_step(carry: Carry, action: jax.Array, key_env: jax.Array, params: Any):
        now = carry.now
        obs, env_state, reward, terminated, truncated, info = env.step(
            key_env, carry.env_state, action, params)
        reward = reward.astype(jnp.float32)
        reports_success.append("success" in info)  # static: known while tracing
        success = info.get("success", jnp.float32(0.0)) > 0
        carry = take_in(carry._replace(env_state=env_state), action, obs, reward,
                        terminated | truncated, info["final_observation"])
        return carry, (now.obs, reward, success)

    def step(carry: Carry, _: None, params: Any):
        key, key_act, key_env = split_step_keys(carry.key)
        carry, action, planned = act(carry._replace(key=key), key_act)
        carry, (obs, reward, success) = jax.vmap(env_step)(carry, action, key_env, params)
        return carry, (obs, action, reward, success, planned)

    def first(params: Any, key: jax.Array) -> Carry:
        key_reset, key = jax.random.split(key)
        obs, env_state = env.reset(key_reset, params)
        return first_carry(agent, codec, n_transit, obs, env_state,
                           target_return(env, params, cfg), key)

    def episodes(x: jax.Array) -> jax.Array:  # [T, B, ...] -> [B, E, H, ...]
        return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], cfg.episodes, env.horizon,
                                             *x.shape[2:])

    def rollout(params: Any, keys: jax.Array) -> Rollout:
        carry = jax.vmap(first)(params, keys)
        _, (obs_seq, actions, rewards, success, planned) = jax.lax.scan(
            lambda c, x: step(c, x, params), carry, None, length=n_steps)
        # Episodes end only at the horizon, so they tile the step axis exactly.
        returns = episodes(rewards).sum(-1)
        episode_success = episodes(success).any(-1) if reports_success[-1] else None
        planned = episodes(planned).sum(-1, dtype=jnp.int32)
        if cfg.trajectories:
            steps = lambda x: jnp.moveaxis(x, 0, 1)  # [B, T, ...]
            return Rollout(returns, episode_success, steps(obs_seq), steps(actions),
                           steps(rewards), planned)
        return Rollout(returns, episode_success, planned=planned)

    return rollout


def one_task(rollout: Callable[[Any, jax.Array], Rollout]) -> Callable[[Any, jax.Array], Rollout]:
    """``make_rollout``'s batch of one as a per-task function ``(env_params, key) ->
    Rollout`` (vmappable; under ``vmap`` the planning slot becomes a select)."""

    def run(params: Any, key: jax.Array) -> Rollout:
        out = rollout(jax.tree.map(lambda a: a[None], params), key[None])
        return jax.tree.map(lambda a: a[0], out)

    return run


def make_evaluate(env: Any, agent_factory: Callable[[Any], Agent], codec: Any,
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
        return make_rollout(env, agent_factory(model_params), codec, cfg, n_transit)(tasks, keys)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("tasks"), P("tasks")),
                                 out_specs=P("tasks"), check_vma=False))


def evaluate_run(trained: Any, task_index: Any, cfg: EvalConfig, seed: int = 0,
                 cached_model: bool = True) -> Rollout:
    """Meta-test a trained model (``train.load_trained``) on tasks given by global index."""
    import dicp_envs

    env, _ = dicp_envs.make(trained.env_name)
    if env.host_stepped:  # real Meta-World: a host loop around the same agent step
        from dicp_jax.host.evaluate import evaluate_host

        return evaluate_host(trained, env, task_index, cfg, seed, cached_model)
    task_index = np.asarray(task_index, np.int64)
    method = methods.get(trained.train_cfg.method)
    n_transit = trained.model_cfg.n_transit
    options = {} if cached_model else {"cached": False}  # the AD cost-model comparison
    factory = lambda p: method.make_agent(trained.model, p, trained.codec, n_transit, **options)
    # Every process's devices (``dicp_jax.distributed``): in a multi-process run every
    # process calls this with the same tasks, runs those of its own devices, and gets all
    # the results back.
    mesh = distributed.global_mesh("tasks")
    devices = list(mesh.devices.flat)
    evaluate = make_evaluate(env, factory, trained.codec, cfg, n_transit, devices)
    # restored params sit on one device (or are replicated): replicate them over the mesh
    params = jax.device_put(trained.params, NamedSharding(mesh, P()))
    n = len(task_index)
    padded = np.concatenate([task_index, np.repeat(task_index[-1:], -n % len(devices))])
    tasks = env.params_for(np.asarray(env.task_list())[padded])
    keys = task_keys(jax.random.PRNGKey(seed), padded)
    tasks, keys = distributed.to_global((tasks, keys), NamedSharding(mesh, P("tasks")))
    out = evaluate(params, tasks, keys)
    return jax.tree.map(lambda a: a[:n], distributed.to_host(out))
