"""The continuous codec, the model and AD's loss with it, and the ``sampled`` planner.

The codec's losses are checked against their reference formulas; the model against the
same causality contract as the grid's; the planner against a hand-made world model with
the true dynamics of a 2-D point mass (written here), so its choice can be checked
against the true rewards of its candidates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dicp_jax import codecs, planning
from dicp_jax.codecs.continuous import ContinuousCodecConfig
from dicp_jax.config import ConfigError
from dicp_jax.data import prepare
from dicp_jax.methods.ad import loss as ad_loss
from dicp_jax.methods.ad import window
from dicp_jax.model import (
    EMPTY_STEP,
    DICPTransformer,
    Heads,
    ModelConfig,
    Tokens,
    init_params,
    interleave,
    state_token,
    token_pos,
)
from dicp_jax.planning import PREDICTED_REWARD, Situation, WorldModel
from dicp_jax.planning.sampled import SampledConfig, draw, sampled_search
from dicp_jax.planning.world_model import cached, uncached
from dicp_jax.sources.base import History
from dicp_jax.validate import Validator

OBS_DIM, ACTION_DIM, HORIZON = 2, 2, 100
SPEED, WIDTH = 0.1, 0.1  # point mass: p' = p + SPEED * a; reward's length scale


@dataclasses.dataclass(frozen=True)
class StubEnv:  # what a continuous env declares to its codec
    codec: str = "continuous"
    obs_dim: int = OBS_DIM
    action_dim: int = ACTION_DIM
    horizon: int = HORIZON


def make_codec(**options):
    return codecs.for_env(StubEnv(), ContinuousCodecConfig(**options))


CODEC = make_codec()
TINY = ModelConfig(n_transit=6, width=16, n_layers=1, n_heads=2, mlp=32)  # compiles fast


# -- codec ----------------------------------------------------------------------------------------
def test_codec_is_registered_with_the_declared_sizes():
    assert "continuous" in codecs.names()
    assert codecs.config_type(StubEnv()) is ContinuousCodecConfig
    assert CODEC.obs_dim == OBS_DIM and CODEC.obs.head_size == OBS_DIM
    assert CODEC.action.shape == (ACTION_DIM,) and CODEC.action.head_size == 2 * ACTION_DIM
    assert CODEC.action.dtype == jnp.float32 and not hasattr(CODEC.action, "n")
    assert CODEC.reward.head_size == 1
    assert CODEC.rtg_scale == 10.0 * HORIZON  # the largest return: targets in [0, 1]
    assert CODEC.obs.predicted and not make_codec(predict_next_obs=False).obs.predicted
    with pytest.raises(ConfigError, match="reward_low"):
        make_codec(reward_low=1.0, reward_high=1.0)


def test_gaussian_nll_is_torch_full_gaussian_nll():
    """0.5 (log var + (x - mean)^2 / var + log 2 pi), averaged over coordinates: the negative
    log density; the variance floor acts on the value, the gradient passes through."""
    mean, logvar, x = np.random.default_rng(0).normal(size=(3, 5, ACTION_DIM)).astype(np.float32)
    nll = jax.jit(CODEC.action.loss)
    loss = nll(np.concatenate([mean, logvar], -1), x)
    ref = -scipy.stats.norm.logpdf(x, mean, np.exp(logvar / 2)).mean(-1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
    by_hand = 0.5 * (logvar + (x - mean) ** 2 / np.exp(logvar) + math.log(2 * math.pi))
    np.testing.assert_allclose(loss, by_hand.mean(-1), rtol=1e-5)
    # var = e^-30 < 1e-6: the value uses 1e-6 (torch's eps) ...
    tiny, target = np.array([0.0, 0.0, -30.0, -30.0]), np.array([0.1, 0.1])
    floor = 0.5 * (math.log(1e-6) + 0.01 / 1e-6 + math.log(2 * math.pi))
    np.testing.assert_allclose(nll(tiny, target), floor, rtol=1e-6)
    # ... and the gradient is the formula's at the floored value, finite
    grad = jax.jit(jax.grad(CODEC.action.loss))(tiny, target)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[:2], -0.1 / 1e-6 / 2, rtol=1e-5)  # d/dmean, / 2 coords


def test_gaussian_mode_and_sample():
    head = jnp.array([0.5, -1.0, math.log(4.0), math.log(0.25)])  # std 2 and 0.5
    np.testing.assert_array_equal(CODEC.action.mode(head), [0.5, -1.0])
    key = jax.random.PRNGKey(3)
    eps = jax.random.normal(key, (ACTION_DIM,))
    np.testing.assert_allclose(CODEC.action.sample(key, head),
                               jnp.array([0.5, -1.0]) + jnp.array([2.0, 0.5]) * eps, rtol=1e-6)
    assert CODEC.action.sample(key, head).shape == CODEC.action.shape
    # a hit: every coordinate within the tolerance (0.1) of the target
    assert CODEC.action.correct(head, jnp.array([0.55, -0.95]))
    assert not CODEC.action.correct(head, jnp.array([0.55, -1.2]))


def test_reward_is_the_clipped_squared_error():
    """The paper's code: MSE of clip(pred, 0, 10) against r; no gradient outside [0, 10]."""
    pred = jnp.array([[-2.0], [3.0], [12.0], [9.5]])
    r = jnp.array([0.6, 2.0, 10.0, 7.5])
    np.testing.assert_allclose(CODEC.reward.loss(pred, r), [0.36, 1.0, 0.0, 4.0], rtol=1e-6)
    np.testing.assert_array_equal(CODEC.reward.mode(pred), [0.0, 3.0, 10.0, 9.5])
    grad = jax.grad(lambda p: CODEC.reward.loss(p, r).sum())(pred)
    np.testing.assert_allclose(grad[:, 0], [0.0, 2.0, 0.0, 4.0])
    np.testing.assert_array_equal(CODEC.reward.correct(pred, r), [False, False, True, False])
    wide = make_codec(reward_low=-1.0, reward_high=1.0)
    np.testing.assert_array_equal(wide.reward.mode(pred), [-1.0, 1.0, 1.0, 1.0])
    assert wide.rtg_scale == 1.0 * HORIZON


def test_obs_regression():
    head = jnp.array([[0.1, 0.2], [1.0, -1.0]])
    target = jnp.array([[0.12, 0.2], [0.0, 0.0]])
    np.testing.assert_allclose(CODEC.obs.loss(head, target), [0.0002, 1.0], rtol=1e-5)
    np.testing.assert_array_equal(CODEC.obs.correct(head, target), [True, False])
    np.testing.assert_array_equal(CODEC.obs.mode(head), head)


# -- model and AD's loss --------------------------------------------------------------------------
def random_tokens(seed: int, n: int) -> Tokens:
    """n random float transitions as Tokens [2n] (numpy draws: no per-op compiles)."""
    rng = np.random.default_rng(seed)
    tok = interleave(rng.normal(size=(n, OBS_DIM)).astype(np.float32),
                     10 * rng.uniform(size=n), rng.uniform(size=n) < 0.2,
                     rng.normal(size=(n, ACTION_DIM)).astype(np.float32), np.arange(n))
    return jax.tree.map(np.asarray, tok)


@pytest.fixture(scope="module")
def model_params():
    model = DICPTransformer(TINY, CODEC)
    return model, init_params(model, jax.random.PRNGKey(0))


def test_model_with_float_tokens_is_causal(model_params):
    model, params = model_params
    assert params["action_embed"]["kernel"].shape == (ACTION_DIM, TINY.width)
    assert params["action_head"]["kernel"].shape == (TINY.width, 2 * ACTION_DIM)
    apply = jax.jit(lambda t: model.apply({"params": params}, t)[0])
    tok = random_tokens(1, 8)
    assert tok.action.shape == (16, ACTION_DIM) and tok.action.dtype == jnp.float32
    base = apply(tok)
    for cut in (0, 5, 10):  # change every token's content at index >= cut
        other = random_tokens(10 + cut, 8)
        mixed = jax.tree.map(lambda a, b, c=cut: np.concatenate([a[:c], b[c:]]), tok, other)
        out = apply(mixed._replace(step=tok.step, kind=tok.kind))
        for a, b in zip(base, out, strict=True):
            np.testing.assert_allclose(a[:cut], b[:cut], atol=1e-5)
            assert not np.allclose(a[cut:], b[cut:], atol=1e-5)


def point_history(seed: int, n_tasks=2, n_streams=2, n_steps=30, horizon=10) -> History:
    """Random-action point-mass streams toward per-task goals (the History contract)."""
    rng = np.random.default_rng(seed)
    goal = rng.uniform(-0.5, 0.5, size=(n_tasks, 1, 1, OBS_DIM))
    action = rng.normal(size=(n_tasks, n_streams, n_steps, ACTION_DIM))
    t = np.arange(n_steps) % horizon
    start = np.zeros(OBS_DIM, np.float32)
    pos = [np.broadcast_to(start, (n_tasks, n_streams, OBS_DIM))]
    for i in range(n_steps - 1):
        nxt = pos[-1] + SPEED * action[:, :, i]
        pos.append(np.where(t[i + 1] == 0, start, nxt))
    obs = np.stack(pos, 2).astype(np.float32)
    next_obs = obs + SPEED * action
    reward = 10 * np.exp(-np.square(next_obs - goal).sum(-1) / (2 * WIDTH**2))
    done = np.broadcast_to(t == horizon - 1, reward.shape)
    return History(obs.astype(np.float16), np.asarray(action, np.float16),
                   reward.astype(np.float16), next_obs.astype(np.float16), done)


def test_ad_loss_and_validation_with_the_continuous_codec(model_params):
    """A loss step with finite gradients; with the paper's config (``predict_next_obs=False``)
    the next-observation term and metric are absent, the other terms unchanged."""
    model, params = model_params  # the default codec: the next observation is predicted
    data = jax.device_put(prepare(point_history(2)))
    n = TINY.n_transit
    tokens, targets = jax.jit(jax.vmap(window, (None, 0, 0, 0, None)), static_argnums=4)(
        data, jnp.array([0, 1, 1]), jnp.array([1, 0, 1]), jnp.array([0, 7, 20]), n)
    assert tokens.action.shape == (3, 2 * n, ACTION_DIM) and tokens.obs.dtype == jnp.float32
    loss_of = lambda m, p: ad_loss(m, p, tokens, targets, jax.random.PRNGKey(4), 1.0,
                                   deterministic=True)  # dropout's bits: compile time only
    (total, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p: loss_of(model, p), has_aux=True))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    parts = metrics["action_loss"] + metrics["reward_loss"] + metrics["rtg_loss"]
    np.testing.assert_allclose(total, parts + metrics["obs_loss"], rtol=1e-5)
    assert np.abs(np.asarray(grads["obs_head"]["kernel"])).sum() > 0
    # the same parameter shapes: the obs head stays, untrained
    paper = DICPTransformer(TINY, make_codec(predict_next_obs=False))
    total_p, metrics_p = jax.jit(lambda p: loss_of(paper, p))(params)
    assert "obs_loss" not in metrics_p
    np.testing.assert_allclose(total_p, parts, rtol=1e-5)
    # validation of the paper's config: accuracies and the reward error, no grid metrics
    val = Validator(paper, window, data, n_windows=4)(params)
    assert 0.0 <= val["action_acc"] <= 1.0 and 0.0 <= val["reward_acc"] <= 1.0
    assert val["reward_mae"] >= 0.0 and val["obs_acc"] is None
    assert "reward_recall" not in val and "obs_acc" not in val["by_position"]
    assert len(val["by_position"]["reward_mae"]) == n


# -- the sampled planner with a point-mass oracle -------------------------------------------------
class Fact(NamedTuple):  # the oracle's cache entry per token
    obs: jax.Array  # float32 [T, 2]: the state token's observation (action entries copy it)
    step: jax.Array  # int32 [T]
    pos: jax.Array  # int32 [T]


def no_facts(length: int) -> Fact:
    return Fact(jnp.zeros((length, OBS_DIM)), jnp.full((length,), EMPTY_STEP, jnp.int32),
                jnp.full((length,), -1, jnp.int32))


def true_reward(p: jax.Array, goal: jax.Array) -> jax.Array:
    return 10 * jnp.exp(-jnp.square(p - goal).sum(-1) / (2 * WIDTH**2))


def point_oracle(goal: jax.Array, head: jax.Array, reward_step=None) -> WorldModel:
    """True point-mass dynamics: an action token's heads are the true next position and
    reward (paid only at ``reward_step`` if given); every state token's policy head is
    ``head``."""

    def decode(tokens: Tokens, caches: tuple):
        known = jax.tree.map(lambda *xs: jnp.concatenate(xs), no_facts(0), *caches)
        tok = jax.tree.map(lambda x: x[0], tokens)  # planners decode one token at a time
        pos = token_pos(tok)
        prev = jax.tree.map(lambda x: x[jnp.argmax((known.pos == pos - 1)
                                                   & (known.step != EMPTY_STEP))], known)
        nxt = prev.obs + SPEED * tok.action
        r = true_reward(nxt, goal)
        if reward_step is not None:
            r = jnp.where(tok.step == reward_step, r, 0.0)
        heads = Heads(action_logits=head, reward_logits=r[None], obs_logits=nxt, rtg=r)
        fact = Fact(jnp.where(tok.kind == 0, tok.obs, prev.obs), tok.step, pos)
        return jax.tree.map(lambda x: x[None], (heads, fact))

    def write(cache: Fact, entries: Fact, tokens: Tokens, slots: jax.Array) -> Fact:
        return jax.tree.map(lambda c, e: c.at[slots].set(e), cache, entries)

    return WorldModel(no_facts, decode, write)


ROOT_HEAD = jnp.array([0.3, -0.2, 0.0, 0.0])  # mean (0.3, -0.2), unit variance
P0, STEP = jnp.array([0.2, -0.1]), 40


def situation(wm: WorldModel, steps_left=30, policy_action=None) -> Situation:
    """The real cache holding the current state token at ``P0``."""
    tok = state_token(CODEC, P0, 1.0, False, STEP)
    cache = wm.init_cache(4)
    _, entries = wm.decode(tok, (cache,))
    cache = wm.write(cache, entries, tok, jnp.array([0]))
    action = jnp.full((ACTION_DIM,), 9.0) if policy_action is None else policy_action
    return Situation(cache=cache, action_logits=ROOT_HEAD, policy_action=action,
                     step=jnp.int32(STEP), steps_left=jnp.int32(steps_left),
                     scorer=PREDICTED_REWARD)


def test_candidates_are_the_mean_then_samples():
    cands = draw(CODEC, ROOT_HEAD, jax.random.PRNGKey(0), 10)
    assert cands.shape == (10, ACTION_DIM)
    np.testing.assert_array_equal(cands[0], ROOT_HEAD[:ACTION_DIM])
    assert len(np.unique(np.asarray(cands), axis=0)) == 10
    np.testing.assert_array_equal(draw(CODEC, ROOT_HEAD, jax.random.PRNGKey(0), 1),
                                  ROOT_HEAD[None, :ACTION_DIM])


def test_sampled_planner_takes_the_candidate_with_the_best_true_reward():
    """Vmapped over goals like the rollout's tasks: each goal's plan is its best candidate
    by the true reward; the mean is candidate 0, and wins when it is best or all tie."""
    cfg = SampledConfig(plan_last_steps=None)
    key = jax.random.PRNGKey(5)

    @jax.jit
    @jax.vmap
    def run(goal):
        wm = point_oracle(goal, ROOT_HEAD)
        now = situation(wm)
        plan = planning.get("sampled").make(wm, CODEC, cfg)
        return plan(now, key), sampled_search(wm, CODEC, cfg, now.cache, now.action_logits,
                                              now.step, now.steps_left, key)

    cands = run(jnp.zeros((3, OBS_DIM)))[1].candidates[0]  # they do not depend on the goal
    np.testing.assert_array_equal(cands[0], ROOT_HEAD[:ACTION_DIM])
    goals = jnp.stack([P0 + SPEED * cands[4] + 0.01,  # near one sample
                       P0 + SPEED * ROOT_HEAD[:ACTION_DIM],  # the mean's arrival
                       P0 + 100.0])  # out of reach: every predicted reward is 0
    actions, searched = run(goals)
    for g, goal in enumerate(goals):
        np.testing.assert_array_equal(searched.candidates[g], cands)
        truth = true_reward(P0 + SPEED * cands, goal)
        np.testing.assert_allclose(searched.reward[g], truth, rtol=1e-5, atol=1e-6)
        # atol: the plan's own draw, compiled apart from the search's, may round apart
        np.testing.assert_allclose(actions[g], cands[int(jnp.argmax(truth))], atol=1e-6)
    assert int(jnp.argmax(true_reward(P0 + SPEED * cands, goals[0]))) == 4
    np.testing.assert_array_equal(actions[1], ROOT_HEAD[:ACTION_DIM])
    np.testing.assert_array_equal(actions[2], ROOT_HEAD[:ACTION_DIM])


def test_deeper_search_finds_a_reward_one_imagined_step_later():
    """Reward only at the second imagined step; imagined states' policy is deterministic
    (mean (1, 0)). Depth 1 sees no reward (the mean by the tie rule); depth 3 with every
    root candidate kept takes the one whose two-step arrival is best, unless the episode
    ends after one real step (it does not imagine past it)."""
    imagined = jnp.array([1.0, 0.0, -60.0, -60.0])
    key = jax.random.PRNGKey(8)
    deep = SampledConfig(depth=3, keep=10, plan_last_steps=None)

    @jax.jit
    def run(goal):  # one compile for all the searches
        # every state token but the real one gets the imagined head
        wm = point_oracle(goal, imagined, reward_step=STEP + 1)

        def act(cfg, steps_left):
            now = situation(wm, steps_left)
            return sampled_search(wm, CODEC, cfg, now.cache, now.action_logits, now.step,
                                  now.steps_left, key)

        shallow = act(SampledConfig(plan_last_steps=None), 30).action
        return jax.vmap(lambda left: act(deep, left))(jnp.array([30, 2, 1])), shallow

    cands = run(P0)[0].candidates[0]
    goal = P0 + SPEED * (cands[6] + imagined[:2]) + 0.005
    deep, shallow = run(goal)
    truth = true_reward(P0 + SPEED * (cands + imagined[:2]), goal)
    assert int(jnp.argmax(truth)) == 6
    np.testing.assert_array_equal(deep.action, cands[jnp.array([6, 6, 0])])
    np.testing.assert_array_equal(shallow, cands[0])


def test_plans_only_in_the_last_steps_of_an_episode():
    """The paper's code plans at in-episode steps 51..99 of 100: 49 steps left or fewer.
    The planner declares it (``acts``), so the rollout runs no search elsewhere."""
    wm = point_oracle(P0 + 100.0, ROOT_HEAD)
    sampled = planning.get("sampled")
    plan = sampled.make(wm, CODEC, SampledConfig())
    policy = jnp.array([0.7, 0.7])
    act = jax.jit(lambda left: plan(situation(wm, left, policy), jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(act(49), ROOT_HEAD[:2])
    assert not sampled.acts(SampledConfig(), jnp.int32(50))
    assert sampled.acts(SampledConfig(), jnp.int32(49))
    assert sampled.acts(SampledConfig(plan_last_steps=None), jnp.int32(100))
    assert SampledConfig() == planning.get("sampled").config()
    assert (SampledConfig().candidates, SampledConfig().depth) == (10, 1)
    for bad in (dict(candidates=0), dict(depth=0), dict(keep=0), dict(plan_last_steps=0)):
        with pytest.raises(ConfigError):
            SampledConfig(**bad).validate()
    with pytest.raises(ConfigError, match="predict"):
        planning.get("sampled").make(wm, make_codec(predict_next_obs=False),
                                     SampledConfig(depth=2))


def test_sampled_planner_on_the_model_cached_equals_uncached(model_params):
    """With the Transformer as world model the key/value cache and re-running the context
    predict the same rewards for the same candidates and choose the same action."""
    model, params = model_params
    length = 2 * TINY.n_transit
    real = random_tokens(6, 5)  # 4 real transitions, then a state token
    real = jax.tree.map(lambda x: x[:-1], real)

    def run(wm: WorldModel):
        cache = wm.init_cache(length)
        heads, entries = wm.decode(real, (cache,))
        cache = wm.write(cache, entries, real, token_pos(real) % length)
        return sampled_search(wm, CODEC, SampledConfig(), cache, heads.action_logits[-1],
                              real.step[-1], jnp.int32(9), jax.random.PRNGKey(2))

    a = jax.jit(lambda p: run(cached(model, p)))(params)
    b = jax.jit(lambda p: run(uncached(model, p)))(params)
    np.testing.assert_allclose(a.candidates, b.candidates, atol=1e-6)
    np.testing.assert_allclose(a.reward, b.reward, atol=1e-5)
    np.testing.assert_allclose(a.action, b.action, atol=1e-6)
    assert a.action.shape == (ACTION_DIM,) and a.candidates.shape == (10, ACTION_DIM)


def test_the_brax_rollout_searches_only_in_the_sampled_planners_window():
    """From step 0, the sampled planner acts on the last 49 steps of each 100-step Reach
    episode and nowhere else (the rollout's planning slot skips the rest)."""
    import dicp_envs
    from dicp_jax.evaluate import EvalConfig, make_evaluate
    from dicp_jax.methods.ad import agent_from
    from dicp_jax.rng import task_keys

    env, _ = dicp_envs.make("reach")
    codec = codecs.for_env(env)
    mcfg = ModelConfig(n_transit=8, width=16, n_layers=1, n_heads=2, mlp=32)
    model = DICPTransformer(mcfg, codec)
    params = init_params(model, jax.random.PRNGKey(0))
    cfg = EvalConfig(episodes=1, planner="sampled", plan_start=0)
    evaluate = make_evaluate(env, lambda p: agent_from(cached(model, p), codec, 8), codec, cfg,
                             8)
    idx = np.arange(2)
    out = evaluate(params, env.params_for(np.asarray(env.task_list())[idx]),
                   task_keys(jax.random.PRNGKey(0), idx))
    np.testing.assert_array_equal(np.asarray(out.planned), [[49], [49]])
