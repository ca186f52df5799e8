"""DPT / DICP-DPT: the oracle labels on all three grid families, the query-first layout
(indexing, causality), and its meta-test agent and world model against hand-built
sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dicp_envs
from dicp_jax import codecs
from dicp_jax.data import prepare
from dicp_jax.methods import dpt
from dicp_jax.methods.base import Step, TaskInfo, Transition
from dicp_jax.model import ModelConfig, action_token, state_token
from dicp_jax.planning.world_model import empty_tokens, write_tokens
from dicp_jax.testing import synthetic_history

MCFG = ModelConfig(n_transit=6, width=16, n_layers=2, n_heads=2, mlp=32, dropout=0.0,
                   attn_dropout=0.0)


@pytest.mark.parametrize("name", ["darkroom", "darkroom_permuted", "dark_key_to_door"])
def test_following_the_labels_earns_the_optimal_return_on_every_task(name):
    """Labels computed from the recorded stream so far (observations, rewards, episode
    ends), followed online for two episodes: the optimal return in each, on every task."""
    env, _ = dicp_envs.make(name)
    tasks = env.params_for(np.asarray(env.task_list()))
    T = 2 * env.horizon

    def run(p):
        def step(c, k):
            obs, st, hist, t = c
            hist = hist._replace(obs=hist.obs.at[t].set(obs))
            label = env.recorded_optimal_actions(hist.obs, hist.reward, hist.done, p)[t]
            obs, st, r, term, trunc, _ = env.step(k, st, label, p)
            hist = hist._replace(reward=hist.reward.at[t].set(r),
                                 done=hist.done.at[t].set(term | trunc))
            return (obs, st, hist, t + 1), r

        obs, st = env.reset(jax.random.PRNGKey(0), p)
        hist = Transition(jnp.zeros((T, 2), jnp.int32), None, jnp.zeros((T,)), None,
                          jnp.zeros((T,), bool))
        _, r = jax.lax.scan(step, (obs, st, hist, 0), jax.random.split(jax.random.PRNGKey(1), T))
        return r.reshape(2, env.horizon).sum(-1)

    returns = np.asarray(jax.jit(jax.vmap(run))(tasks))
    opt = np.asarray(env.optimal_return(tasks))
    np.testing.assert_array_equal(returns, np.stack([opt, opt], 1))


def test_label_spot_values():
    env, _ = dicp_envs.make("darkroom")
    p = env.params_for(np.array([[6, 2]]))
    p = jax.tree.map(lambda a: a[0], p)
    path = jnp.array([[4, 4], [5, 4], [6, 4], [6, 3], [6, 2]])
    labels = env.recorded_optimal_actions(path, jnp.zeros(5), jnp.zeros(5, bool), p)
    np.testing.assert_array_equal(labels, [0, 0, 3, 3, 4])  # x first, then y, then stay
    perm, _ = dicp_envs.make("darkroom_permuted")
    for idx, want in ((0, 0), (119, 4)):
        q = jax.tree.map(lambda a: a[0], perm.params_for(np.array([[idx]])))
        got = perm.recorded_optimal_actions(jnp.zeros((1, 2), jnp.int32), jnp.zeros(1),
                                            jnp.zeros(1, bool), q)
        assert int(got[0]) == want
    # Key-to-Door: toward the key until the episode's first reward, then toward the door;
    # the key is forgotten at the next episode.
    k2d, _ = dicp_envs.make("dark_key_to_door", horizon=3)
    q = jax.tree.map(lambda a: a[0], k2d.params_for(np.array([[5, 4, 4, 0]])))
    obs = jnp.array([[4, 4], [5, 4], [5, 4], [4, 4], [5, 4], [5, 4]])
    rew = jnp.array([0, 1, 0, 0, 1, 0.0])
    done = jnp.array([0, 0, 1, 0, 0, 1], bool)
    labels = k2d.recorded_optimal_actions(obs, rew, done, q)
    np.testing.assert_array_equal(labels, [0, 4, 1, 0, 4, 1])


def _data(n_tasks=3, steps=40):
    idx = [3, 40, 77][:n_tasks]
    hist = synthetic_history("darkroom", idx, 2, steps, jax.random.PRNGKey(0))
    env, _ = dicp_envs.make("darkroom")
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    return env, jax.tree.map(jnp.asarray, prepare(hist, adapt=lambda d: dpt.prepare_data(
        d, env, tasks)))


def test_window_layout_matches_the_papers_indexing():
    _, data = _data()
    n, t = 6, 11
    tokens, targets = dpt.window(data, 1, 0, t, n)
    assert tokens.kind.tolist() == [0] + [1] * (n - 1) + [2]
    h = jax.tree.map(lambda a: a[1, 0], data._replace(imitate=None))
    np.testing.assert_array_equal(tokens.obs[0], h.obs[t + n - 1])  # the query state
    np.testing.assert_array_equal(tokens.obs[1:n], h.obs[t:t + n - 1])  # context, oldest first
    np.testing.assert_array_equal(tokens.next_obs[1:n], h.next_obs[t:t + n - 1])
    np.testing.assert_array_equal(tokens.action[1:n], h.action[t:t + n - 1])
    assert int(tokens.action[n]) == int(h.action[t + n - 1])  # the learner's, not a*
    assert int(targets.action) == int(h.label[t + n - 1])
    assert float(targets.reward) == float(h.reward[t + n - 1])
    np.testing.assert_array_equal(targets.next_obs, h.next_obs[t + n - 1])


def _model():
    env, _ = dicp_envs.make("darkroom")
    model = dpt.make_model(MCFG, codecs.for_env(env))
    return env, model, dpt.init_params(model, jax.random.PRNGKey(0))


def test_causality_and_the_query_action_token_is_invisible_to_the_policy():
    env, model, params = _model()
    _, data = _data()
    tokens, _ = dpt.window(data, 0, 1, 5, MCFG.n_transit)
    apply = jax.jit(lambda t: model.apply({"params": params}, t))
    base = apply(tokens)
    j = 3  # perturb context token c_3 (index 3)
    moved = tokens._replace(obs=tokens.obs.at[j].set((tokens.obs[j] + 2) % 9))
    out = apply(moved)
    np.testing.assert_array_equal(out.action_logits[:j], base.action_logits[:j])
    assert not np.allclose(out.action_logits[j:], base.action_logits[j:])
    qa = tokens._replace(action=tokens.action.at[-1].set((tokens.action[-1] + 1) % 5))
    out = apply(qa)
    np.testing.assert_array_equal(out.action_logits[:-1], base.action_logits[:-1])
    assert not np.allclose(out.reward_logits[-1], base.reward_logits[-1])


def test_the_loss_reaches_every_head():
    _, model, params = _model()
    _, data = _data()
    idx = jnp.arange(8)
    tokens, targets = jax.jit(jax.vmap(lambda i: dpt.window(data, i % 3, i % 2, i * 3, 6)))(idx)
    key = jax.random.PRNGKey(0)
    grad = jax.jit(jax.grad(lambda p: dpt.loss(model, p, tokens, targets, key, 1.0, True)[0]))(
        params)
    for head in ("action_head", "reward_head", "obs_head", "next_state", "query_action"):
        assert float(jnp.abs(jax.tree.leaves(grad[head])[0]).sum()) > 0, head


def _steps(env, task, actions):
    """Real steps of an env driven by ``actions``, as the rollout hands them to an agent."""
    obs, st = env.reset(jax.random.PRNGKey(0), task)
    now = Step(obs, jnp.float32(0), jnp.array(True), jnp.int32(0), jnp.int32(0),
               Transition(obs, jnp.int32(0), jnp.float32(0), obs, jnp.array(False)))
    out = []
    for a in actions:
        out.append(now)
        obs2, st, r, term, trunc, info = env.step(jax.random.PRNGKey(1), st, jnp.int32(a), task)
        done = term | trunc
        now = Step(obs2, r, done, now.step + 1, jnp.where(done, 0, now.episode_step + 1),
                   Transition(now.obs, jnp.int32(a), r, info["final_observation"], done))
    return out


def test_agent_context_slides_across_episodes_with_terminal_next_states():
    env, _ = dicp_envs.make("darkroom", horizon=4)
    _, model, params = _model()
    codec = codecs.for_env(env)
    task = jax.tree.map(lambda a: a[0], env.params_for(np.array([[5, 4]])))
    agent = dpt.make_agent(model, params, codec, MCFG.n_transit)
    ctx = agent.init(TaskInfo(jnp.float32(0)))
    actions = [0, 0, 2, 2, 1, 0, 3, 4, 0]
    steps = _steps(env, task, actions)
    query, commit = jax.jit(agent.query), jax.jit(agent.commit)
    for now, a in zip(steps, actions, strict=True):
        ctx, logits, _ = query(ctx, now)
        ctx = commit(ctx, now, jnp.int32(a))
    k = len(actions) - 1  # transitions before the last query
    m = MCFG.n_transit - 1
    assert int(ctx.count) == min(k, m)
    got = [(tuple(ctx.obs[i].tolist()), int(ctx.action[i])) for i in range(int(ctx.count))]
    want = [(tuple(s.obs.tolist()), a) for s, a in zip(steps[:k], actions[:k], strict=True)]
    assert got == want[-m:]
    # the 4th transition ends episode 1: its s' is the terminal cell, the next query the start
    end = [i for i, s in enumerate(steps[1:]) if bool(s.first)][0]
    i = end - (k - int(ctx.count))
    np.testing.assert_array_equal(ctx.next_obs[i], steps[end].obs + np.array([0, 1]))
    np.testing.assert_array_equal(steps[end + 1].obs, [4, 4])
    # the agent's logits are the model's on the hand-built [query, context] sequence
    seq = dpt.DPTTokens(
        kind=jnp.array([0] + [1] * m, jnp.int32), obs=jnp.concatenate([ctx.query[None],
                                                                         ctx.obs]),
        action=jnp.concatenate([jnp.zeros(1, jnp.int32), ctx.action]),
        reward=jnp.concatenate([jnp.zeros(1), ctx.reward]),
        next_obs=jnp.concatenate([ctx.query[None], ctx.next_obs]),
        pos=jnp.arange(m + 1), valid=jnp.ones(m + 1, bool))
    ref = model.apply({"params": params}, seq).action_logits[-1]
    np.testing.assert_allclose(logits, ref, atol=1e-5)


def test_world_model_lays_imagined_steps_out_as_the_papers_planner():
    """An imagined state token at depth 1 = the sequence [ŝ, window[1:] + (s, a, r̂, ŝ')];
    an action token at depth 1 appends the query-action token to it."""
    env, model, params = _model()
    codec = codecs.for_env(env)
    m = MCFG.n_transit - 1
    rng = np.random.default_rng(0)
    ctx = dpt.Context(jnp.asarray(rng.integers(0, 9, (m, 2)), jnp.int32),
                      jnp.asarray(rng.integers(0, 5, m), jnp.int32),
                      jnp.asarray(rng.integers(0, 2, m), jnp.float32),
                      jnp.asarray(rng.integers(0, 9, (m, 2)), jnp.int32), jnp.int32(m),
                      jnp.array([4, 4], jnp.int32), jnp.int32(30))
    wm = dpt.world_model(model, params)
    beam = wm.init_cache(6)
    a0 = action_token(codec, jnp.int32(2), 30)
    h0, e0 = wm.decode(a0, (ctx, beam))
    beam = wm.write(beam, e0, a0, jnp.array([0]))
    s1 = state_token(codec, jnp.array([4, 5]), jnp.float32(1.0), False, 31)
    h1, _ = wm.decode(s1, (ctx, beam))
    a1 = action_token(codec, jnp.int32(3), 31)
    beam = write_tokens(beam, s1, jnp.array([1]))
    h2, _ = wm.decode(a1, (ctx, beam))

    def seq(query, trans, qa=None):
        obs, act, rew, nxt = (jnp.asarray(x) for x in zip(*trans, strict=True))
        n = len(trans) + 1 + (qa is not None)
        cat = lambda q, c, a: jnp.concatenate([q[None], c] + ([a[None]] if qa is not None
                                                              else []))
        qa_ = jnp.int32(0 if qa is None else qa)
        return dpt.DPTTokens(
            kind=jnp.array([0] + [1] * len(trans) + ([2] if qa is not None else []), jnp.int32),
            obs=cat(query, obs, query), action=cat(qa_, act, qa_),
            reward=cat(jnp.float32(0), rew.astype(jnp.float32), jnp.float32(0)),
            next_obs=cat(query, nxt, query), pos=jnp.arange(n), valid=jnp.ones(n, bool))

    real = [(ctx.obs[i], ctx.action[i], ctx.reward[i], ctx.next_obs[i]) for i in range(m)]
    run = lambda s: model.apply({"params": params}, s)
    ref0 = run(seq(ctx.query, real, 2))
    np.testing.assert_allclose(h0.reward_logits[0], ref0.reward_logits[-1], atol=1e-5)
    imagined = real[1:] + [(ctx.query, jnp.int32(2), jnp.float32(1.0), jnp.array([4, 5]))]
    ref1 = run(seq(jnp.array([4, 5]), imagined))
    np.testing.assert_allclose(h1.action_logits[0], ref1.action_logits[-1], atol=1e-5)
    ref2 = run(seq(jnp.array([4, 5]), imagined, 3))
    np.testing.assert_allclose(h2.obs_logits[0], ref2.obs_logits[-1], atol=1e-5)
    assert empty_tokens(2, codec).step.shape == (2,)
