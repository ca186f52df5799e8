"""IDT / DICP-IDT: the episode reordering and RTG relabelling, the three-module layout
(segments, causality, gradients), and the meta-test agent and world model against a plain
step-by-step reference of the paper code's evaluation loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dicp_envs
from dicp_jax import codecs, methods
from dicp_jax.config import ConfigError
from dicp_jax.data import prepare
from dicp_jax.evaluate import AGENT_KEY, EvalConfig, make_evaluate
from dicp_jax.methods import idt
from dicp_jax.methods.base import Step, TaskInfo, Transition
from dicp_jax.model import ModelConfig, action_token, state_token
from dicp_jax.planning.beam import BeamConfig
from dicp_jax.rng import task_keys
from dicp_jax.testing import synthetic_history
from dicp_jax.train import TrainConfig

N = 20  # n_transit: two decisions of C = 10 steps
MCFG = ModelConfig(n_transit=N, width=16, n_layers=2, n_heads=2, mlp=32, dropout=0.0,
                   attn_dropout=0.0)
C = idt.C
TASKS = [3, 40, 77]


@pytest.fixture(scope="module")
def env():
    return dicp_envs.make("darkroom")[0]


@pytest.fixture(scope="module")
def raw(env):
    """The scripted histories of three tasks, 2 streams of 5 episodes, and the task params."""
    hist = synthetic_history("darkroom", TASKS, 2, 100, jax.random.PRNGKey(0))
    return hist, env.params_for(np.asarray(env.task_list())[TASKS])


@pytest.fixture(scope="module")
def data(env, raw):
    hist, tasks = raw
    return prepare(hist, adapt=lambda d: idt.prepare_data(d, env, tasks))


@pytest.fixture(scope="module")
def model(env):
    m = idt.make_model(MCFG, codecs.for_env(env))
    return m, idt.init_params(m, jax.random.PRNGKey(0))


# -- data -----------------------------------------------------------------------------------------
def test_registered_and_config_checks():
    assert methods.get("idt") is idt
    idt.check_config(TrainConfig(method="idt"), MCFG)
    for bad in ({"seq_windows": 2}, {"true_context": True}, {"counterfactual": 0.5}):
        with pytest.raises(ConfigError):
            idt.check_config(TrainConfig(method="idt", **bad), MCFG)
    for n in (5, 25):
        with pytest.raises(ConfigError, match="multiple"):
            idt.check_config(TrainConfig(method="idt"), ModelConfig(n_transit=n))
    with pytest.raises(ConfigError):
        idt.make_agent(None, None, None, 15)


def test_episodes_sorted_and_rtg_relabelled(raw, data):
    hist, _ = raw
    h = 20
    ep = lambda a: np.asarray(a, np.float64).reshape(3, 2, 5, h, *np.shape(a)[3:])
    old_r, new_r = ep(hist.reward), ep(data.reward)
    ret = old_r.sum(-1)
    assert len(np.unique(ret)) > 3  # the histories do improve: sorting moves episodes
    order = np.argsort(ret, -1, kind="stable")
    np.testing.assert_array_equal(np.diff(new_r.sum(-1), axis=-1) >= 0, True)
    for f in ("obs", "action", "reward", "next_obs", "done"):
        want = np.take_along_axis(ep(getattr(hist, f)), order.reshape(
            order.shape + (1,) * (ep(getattr(hist, f)).ndim - 3)), 2)
        np.testing.assert_array_equal(ep(getattr(data, f)), want, err_msg=f)  # whole blocks
    rtg = ep(data.rtg)
    best = ret.max(-1)  # M: rewards are >= 0, so the best return is the largest RTG
    np.testing.assert_array_equal(rtg[..., 0], np.broadcast_to(best[..., None], rtg.shape[:3]))
    np.testing.assert_allclose(rtg[..., :-1] - rtg[..., 1:], new_r[..., :-1])  # falls by r_t
    np.testing.assert_allclose(rtg[..., -1], best[..., None] - new_r.sum(-1) + new_r[..., -1])
    assert data.rtg.dtype == np.float32


def test_prepare_refuses_episodes_it_cannot_sort(raw):
    hist, _ = raw
    short, _ = dicp_envs.make("darkroom", horizon=15)
    with pytest.raises(ConfigError, match="multiple"):
        idt.prepare_data(prepare(hist), short, None)
    cut = prepare(jax.tree.map(lambda a: a[:, :, :90], hist))
    env20, _ = dicp_envs.make("darkroom")
    with pytest.raises(ConfigError, match="whole episodes"):
        idt.prepare_data(cut, env20, None)


def test_windows_at_every_offset_cut_unaligned_segments(data):
    d = jax.tree.map(jnp.asarray, data)
    n_steps = d.reward.shape[-1]
    offsets = np.arange(n_steps - N + 1)  # every offset, aligned or not: 81 windows
    tokens, targets = jax.vmap(lambda o: idt.window(d, 1, 1, o, N))(jnp.asarray(offsets))
    assert tokens.obs.shape == (len(offsets), N, 2)
    for o in (0, 13, n_steps - N):
        np.testing.assert_array_equal(tokens.obs[o], data.obs[1, 1, o:o + N])
        np.testing.assert_array_equal(tokens.rtg[o], data.rtg[1, 1, o:o + N])
        np.testing.assert_array_equal(targets.action[o], data.action[1, 1, o:o + N])
    # offset 13: segment 0 = steps 13..22 straddles the episode end at 19, where RTG'
    # jumps back to M; MD reads RTG' and s at window positions 0 and 10 (steps 13, 23).
    rtg = np.asarray(tokens.rtg[13])
    assert rtg[7] == rtg.max() and rtg[7] > rtg[6] - data.reward[1, 1, 19]


# -- model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(data):
    d = jax.tree.map(jnp.asarray, data)
    idx = jnp.arange(8)
    return jax.vmap(lambda i: idt.window(d, i % 3, i % 2, 3 + 9 * i, N))(idx)


TX = optax.adam(3e-3)


@pytest.fixture(scope="module")
def probe(model, batch):
    """One compile for the model tests: ``run(params, opt, tokens, key, weight)`` -> the
    forward outputs of ``tokens`` and one Adam step of ``idt.loss`` (by ``weight``)."""
    m, _ = model
    _, targets = batch

    @jax.jit
    def run(p, opt, tokens, key, weight):
        out = idt.forward(m, p, tokens, key)
        (value, _), g = jax.value_and_grad(idt.loss, argnums=1, has_aux=True)(
            m, p, tokens, targets, key, 1.0, True, weight)
        upd, opt = TX.update(g, opt, p)
        return out, value, g, optax.apply_updates(p, upd), opt

    return run


@pytest.fixture(scope="module")
def fwd(model, probe):
    opt = TX.init(model[1])
    return lambda p, t: probe(p, opt, t, jax.random.PRNGKey(5), jnp.ones((8, N)))[0]


def test_shapes_and_segments_decode_independently(model, batch, fwd):
    _, params = model
    tokens, _ = batch
    out = fwd(params, tokens)
    assert out.heads.action_logits.shape == (8, N, 5)
    assert out.heads.reward_logits.shape == (8, N, 2)
    assert out.heads.obs_logits.shape == (8, N, 81)
    assert out.zdist.shape == out.z_pred.shape == (8, N // C, 16)
    assert out.z.shape == (8, N // C, C, idt.DIM_Z)
    assert not np.allclose(out.z[:, :, 0], out.z[:, :, 1])  # a draw per low step
    # a state inside segment 1 (window position 14): segment 0 and positions < 14 keep
    # their outputs; MD's decisions do not move (RD of segment 1 feeds no later segment)
    moved = fwd(params, tokens._replace(obs=tokens.obs.at[:, 14].set(
        (tokens.obs[:, 14] + 3) % 9)))
    a0, a1 = out.heads.action_logits, moved.heads.action_logits
    np.testing.assert_array_equal(a1[:, :14], a0[:, :14])
    assert not np.allclose(a1[:, 14], a0[:, 14])
    np.testing.assert_array_equal(moved.z, out.z)
    # segment 1's first state: MD's decision for segment 1 moves (all of its positions),
    # segment 0 does not
    moved = fwd(params, tokens._replace(obs=tokens.obs.at[:, 10].set(
        (tokens.obs[:, 10] + 3) % 9)))
    np.testing.assert_array_equal(moved.z_pred[:, 0], out.z_pred[:, 0])
    assert not np.allclose(moved.z_pred[:, 1], out.z_pred[:, 1])
    np.testing.assert_array_equal(moved.heads.action_logits[:, :10], a0[:, :10])


def test_causality(model, batch, fwd):
    """a_t never reaches the action head at s_<=t, r_t never the dynamics heads at a_<=t;
    zdist_i (segment i's data) never reaches MD's decision for segments <= i."""
    _, params = model
    tokens, _ = batch
    out = fwd(params, tokens)
    for t in (3, C - 1, 13):  # C - 1: the last action token of segment 0 sees itself
        moved = fwd(params, tokens._replace(action=tokens.action.at[:, t].set(
            (tokens.action[:, t] + 1) % 5)))
        np.testing.assert_array_equal(moved.heads.action_logits[:, :t + 1],
                                      out.heads.action_logits[:, :t + 1])
        np.testing.assert_array_equal(moved.heads.reward_logits[:, :t],
                                      out.heads.reward_logits[:, :t])
        assert not np.allclose(moved.heads.obs_logits[:, t], out.heads.obs_logits[:, t])
        np.testing.assert_array_equal(moved.z_pred[:, 0], out.z_pred[:, 0])
        # RD of segment 0 feeds MD's decision for segment 1; segment 1's feeds nothing
        assert np.allclose(moved.z_pred[:, 1], out.z_pred[:, 1]) == (t >= C)
    moved = fwd(params, tokens._replace(reward=tokens.reward.at[:, 5].set(
        1.0 - tokens.reward[:, 5])))
    for name in ("reward_logits", "obs_logits", "action_logits"):
        np.testing.assert_array_equal(getattr(moved.heads, name)[:, :6],
                                      getattr(out.heads, name)[:, :6])
    assert not np.allclose(moved.heads.action_logits[:, 6], out.heads.action_logits[:, 6])


@pytest.fixture(scope="module")
def wm(model):
    """DICP-IDT's world model, its ``decode`` compiled once for every test."""
    w = idt.world_model(*model)
    return w._replace(decode=jax.jit(w.decode))


def test_training_layout_is_the_acting_layout(env, model, batch, fwd, wm):
    """The heads a window's forward pass trains at low step k of a segment are the ones the
    agent and the planner read there (same z, same steps before k)."""
    _, params = model
    codec = codecs.for_env(env)
    tokens, _ = batch
    out = fwd(params, tokens)
    for b, i, k in ((2, 0, 6), (5, 1, C - 1)):  # window, segment, low step
        sl = slice(i * C, (i + 1) * C)
        seg = idt.Segment(tokens.obs[b, sl], tokens.action[b, sl], tokens.reward[b, sl],
                          tokens.next_obs[b, sl], jnp.arange(C) < k)
        real = idt.RealCache(out.z[b, i], seg, jnp.int32(k), jnp.int32(50))
        t = i * C + k
        h, _ = wm.decode(state_token(codec, tokens.obs[b, t], 0.0, False, 50),
                         (real, wm.init_cache(20)))
        np.testing.assert_allclose(h.action_logits[0], out.heads.action_logits[b, t],
                                   atol=1e-5)
        h, _ = wm.decode(action_token(codec, tokens.action[b, t], 50),
                         (real, wm.init_cache(20)))
        np.testing.assert_allclose(h.reward_logits[0], out.heads.reward_logits[b, t],
                                   atol=1e-5)
        np.testing.assert_allclose(h.obs_logits[0], out.heads.obs_logits[b, t], atol=1e-5)


def test_tiny_overfit_reaches_every_module(model, batch, probe):
    _, params = model
    tokens, _ = batch
    ones = jnp.ones((8, N))
    opt, losses = TX.init(params), []
    p = params
    for i in range(30):
        _, value, g, p, opt = probe(p, opt, tokens, jax.random.PRNGKey(i), ones)
        if i == 0:
            grads = g
        losses.append(float(value))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
    for module in ("rd", "md", "d2g"):
        assert norm(grads[module]) > 0, module
    # RD reaches the loss only through later segments: segment 0's positions alone give it
    # no gradient (as a window of one decision would give none at all)
    g0 = probe(params, TX.init(params), tokens, jax.random.PRNGKey(0),
               ones.at[:, C:].set(0.0))[2]
    assert norm(g0["rd"]) == 0.0 and norm(g0["md"]) > 0


# -- meta-test ------------------------------------------------------------------------------------
def _steps(env, task, actions):
    """The real steps an env driven by ``actions`` hands an agent (as the rollout does)."""
    obs, st = env.reset(jax.random.PRNGKey(0), task)
    now = Step(obs, jnp.float32(0), jnp.array(True), jnp.int32(0), jnp.int32(0),
               Transition(obs, jnp.int32(0), jnp.float32(0), obs, jnp.array(False)))
    out = []
    for a in actions:
        out.append(now)
        obs2, st, r, term, trunc, info = env.step(jax.random.PRNGKey(1), st, jnp.int32(a), task)
        done = term | trunc
        now = Step(obs2, r.astype(jnp.float32), done, now.step + 1,
                   jnp.where(done, 0, now.episode_step + 1),
                   Transition(now.obs, jnp.int32(a), r.astype(jnp.float32),
                              info["final_observation"], done))
    return out


def _runner(model, params):
    """``run(method, x)``: one module on one unpadded sequence (compiled per length)."""
    apply = jax.jit(lambda method, x: model.apply({"params": params}, x, method=method),
                    static_argnums=0)
    return apply


def reference(model, params, steps, target, key, n_high):
    """The code's evaluation loop with Python lists and unpadded sequences: action logits,
    z and the RTG list at each step but the last of ``steps`` (whole segments, plus the
    step their last transition leads to). D2G runs once per segment over its whole 4C tokens
    and is read at every state token: by causality (``test_causality``) that equals the
    code's growing sequences, and it needs one compile instead of one per length."""
    run = _runner(model, params)
    rtgs, starts, zds, out = [], [], [], []
    stack = lambda seg, f: jnp.stack([getattr(x, f) for x in seg])
    for e in range(0, len(steps) - 1, C):  # a decision at every segment start
        now = steps[e]
        assert int(now.episode_step) % C == 0
        seg = [s.last for s in steps[e + 1:e + C + 1]]  # its transitions
        if e > 0:
            prev = [s.last for s in steps[e - C + 1:e + 1]]
            zds.append(run("review", idt.Segment(stack(prev, "obs"), stack(prev, "action"),
                                                 stack(prev, "reward"),
                                                 stack(prev, "next_obs"), jnp.ones(C, bool))))
            rtg = target if bool(now.first) else rtgs[-1] - float(stack(prev, "reward").sum())
        else:
            rtg = target
        rtgs, starts = (rtgs + [rtg])[-n_high:], (starts + [now.obs])[-n_high:]
        zds = zds[len(zds) - (len(rtgs) - 1):]
        dec = idt.Decisions(jnp.asarray(rtgs, jnp.float32), jnp.stack(starts),
                            jnp.stack(zds + [jnp.zeros(16)]), jnp.ones(len(rtgs), bool))
        pred = run("decide", dec)[-1]
        eps = jax.random.normal(jax.random.fold_in(key, int(now.step)), (C, idt.DIM_Z))
        z = pred[:8] + jnp.exp(pred[8:] / 2) * eps
        low = []  # (kind, z, obs, action, reward) per token
        for k, x in enumerate(seg):
            low += [(idt.Z, z[k], x.obs, 0, 0.0), (idt.S, z[k], x.obs, 0, 0.0),
                    (idt.A, z[k], x.obs, x.action, 0.0), (idt.R, z[k], x.obs, 0, x.reward)]
        cols = list(zip(*low, strict=True))
        toks = idt.LowTokens(jnp.asarray(cols[0], jnp.int32), jnp.stack(cols[1]),
                             jnp.stack(cols[2]).astype(jnp.int32),
                             jnp.asarray(cols[3], jnp.int32), jnp.asarray(cols[4], jnp.float32),
                             jnp.arange(len(low)), jnp.ones(len(low), bool))
        logits = run("decode", toks).action_logits[1::4]  # at s_0 .. s_{C-1}
        out += [(logits[k], z, list(rtgs)) for k in range(C)]
    return out


@pytest.fixture(scope="module")
def agent(env, model):
    m, params = model
    a = idt.make_agent(m, params, codecs.for_env(env), N)
    return a, jax.jit(a.query)


def test_agent_equals_the_code_loop_step_by_step(env, model, agent):
    """MD once per C steps (z changes exactly at segment starts), lists capped at H = 2,
    RTG' reset at episode starts and lowered by each segment's rewards, logits equal to
    unpadded sequences."""
    m, params = model
    ag, query = agent
    task = jax.tree.map(lambda a: a[0], env.params_for(np.array([[5, 4]])))
    rng = np.random.default_rng(0)
    actions = rng.choice(5, 30, p=[0.3, 0.1, 0.1, 0.1, 0.4])  # the goal is one step east
    steps = _steps(env, task, np.concatenate([actions, [0]]))  # + the step after the last
    target = float(env.optimal_return(task))
    key = jax.random.PRNGKey(7)
    ref = reference(m, params, steps, target, key, N // C)
    st = ag.init(TaskInfo(jnp.float32(target), key))
    rewards = np.array([float(s.prev_reward) for s in steps[1:]])  # of steps 0 ..
    assert rewards[:10].sum() > 0  # RTG' falls at step 10
    prev_z = None
    for now, (logits, z, rtgs) in zip(steps[:-1], ref, strict=True):
        st, got, cache = query(st, now)
        np.testing.assert_allclose(got, logits, atol=1e-5)
        np.testing.assert_allclose(st.cache.z, z, atol=1e-5)
        count = int(st.high.valid.sum())
        assert count == len(rtgs) == min(int(now.step) // C + 1, N // C)
        np.testing.assert_allclose(st.high.rtg[:count], rtgs, atol=1e-5)
        t, e = int(now.step), int(now.episode_step)
        if e % C == 0:  # a new decision: its RTG' from the rewards of the episode so far
            assert rtgs[-1] == target - rewards[t - e:t].sum()
            assert not np.array_equal(st.cache.z, prev_z)
            np.testing.assert_array_equal(st.high.zdist[count - 1], 0.0)
        else:
            np.testing.assert_array_equal(st.cache.z, prev_z)
        prev_z = np.asarray(st.cache.z)
        assert int(cache.j) == e % C


def test_world_model_lays_imagined_steps_out_as_the_codes_planner(env, model, wm):
    """Root action: [real prefix .. s_j, a]; depth 1 appends [r̂, z_1, ŝ] (z indexed by
    the imagined depth, not by j + 1), then the next action."""
    m, params = model
    codec = codecs.for_env(env)
    rng = np.random.default_rng(1)
    j = 3
    seg = idt.Segment(jnp.asarray(rng.integers(0, 9, (C, 2)), jnp.int32),
                      jnp.asarray(rng.integers(0, 5, C), jnp.int32),
                      jnp.asarray(rng.integers(0, 2, C), jnp.float32),
                      jnp.zeros((C, 2), jnp.int32), jnp.arange(C) < j)
    real = idt.RealCache(jnp.asarray(rng.normal(size=(C, 8)), jnp.float32), seg,
                         jnp.int32(j), jnp.int32(40))
    beam = wm.init_cache(2 * 10)
    a0 = action_token(codec, jnp.int32(2), 40)
    h0, e0 = wm.decode(a0, (real, beam))
    beam = wm.write(beam, e0, a0, jnp.array([0]))
    s1 = state_token(codec, jnp.array([6, 1]), jnp.float32(1.0), False, 41)
    h1, e1 = wm.decode(s1, (real, beam))
    beam = wm.write(beam, e1, s1, jnp.array([1]))
    h2, _ = wm.decode(action_token(codec, jnp.int32(3), 41), (real, beam))

    apply = _runner(m, params)

    def run(extra):
        toks = []
        for k in range(j + 1):
            toks += [(idt.Z, real.z[k], seg.obs[k], 0, 0.0), (idt.S, real.z[k], seg.obs[k], 0, 0.0)]
            if k < j:
                toks += [(idt.A, real.z[k], seg.obs[k], seg.action[k], 0.0),
                         (idt.R, real.z[k], seg.obs[k], 0, seg.reward[k])]
        toks += extra
        cols = list(zip(*toks, strict=True))
        low = idt.LowTokens(jnp.asarray(cols[0], jnp.int32), jnp.stack(cols[1]),
                            jnp.stack([jnp.asarray(o) for o in cols[2]]).astype(jnp.int32),
                            jnp.asarray(cols[3], jnp.int32), jnp.asarray(cols[4], jnp.float32),
                            jnp.arange(len(toks)), jnp.ones(len(toks), bool))
        return apply("decode", low)

    zero = jnp.zeros(2, jnp.int32)
    ref = run([(idt.A, real.z[0], zero, 2, 0.0),  # index 4j + 2: the root action
               (idt.R, real.z[0], zero, 0, 1.0), (idt.Z, real.z[1], zero, 0, 0.0),
               (idt.S, real.z[0], jnp.array([6, 1]), 0, 0.0),  # 4j + 5: ŝ_1
               (idt.A, real.z[0], zero, 3, 0.0)])  # 4j + 6 (causal: one pass reads all)
    i = 4 * j + 2
    np.testing.assert_allclose(h0.reward_logits[0], ref.reward_logits[i], atol=1e-5)
    np.testing.assert_allclose(h1.action_logits[0], ref.action_logits[i + 3], atol=1e-5)
    np.testing.assert_allclose(h2.obs_logits[0], ref.obs_logits[i + 4], atol=1e-5)
    np.testing.assert_allclose(h2.reward_logits[0], ref.reward_logits[i + 4], atol=1e-5)


def test_one_jit_meta_test_idt_then_dicp_idt(env, model, agent):
    """One rollout: greedy IDT for two episodes (4 decisions, so the lists are capped and
    RTG' resets once), then the beam planner (DICP-IDT, the code's depth 10) from step 40.
    A task's actions do not depend on its batch (a permuted batch with a repeated task, the
    same compile), and replaying the rollout's policy steps through the agent gives its
    actions (argmax) at every one of them."""
    m, params = model
    codec = codecs.for_env(env)
    cfg = EvalConfig(episodes=3, planner="beam", plan=BeamConfig(beam_size=2, depth=10),
                     greedy=True, plan_start=40, trajectories=True)
    evaluate = make_evaluate(env, lambda p: idt.make_agent(m, p, codec, N), codec, cfg, N)
    idx = np.array([3, 40, 77])
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(1), idx)
    out = evaluate(params, tasks, keys)
    assert out.returns.shape == (3, 3) and out.action.shape == (3, 60)
    acts = np.asarray(out.action)
    assert acts.min() >= 0 and acts.max() < 5
    np.testing.assert_allclose(np.asarray(out.returns),
                               np.asarray(out.reward).reshape(3, 3, 20).sum(-1))
    perm = np.array([2, 2, 0])
    other = evaluate(params, jax.tree.map(lambda a: a[perm], tasks), keys[perm])
    np.testing.assert_array_equal(np.asarray(other.action), acts[perm])
    ag, query = agent
    task = jax.tree.map(lambda a: a[1], tasks)
    steps = _steps(env, task, acts[1, :40])
    np.testing.assert_array_equal(np.stack([s.obs for s in steps]), np.asarray(out.obs[1, :40]))
    key = jax.random.fold_in(jax.random.split(keys[1])[1], AGENT_KEY)  # the rollout's
    st = ag.init(TaskInfo(env.optimal_return(task), key))
    for now, a in zip(steps, acts[1, :40], strict=True):
        st, logits, _ = query(st, now)
        assert int(jnp.argmax(logits)) == int(a)
