"""Training: data windows, overfitting, checkpoints/resume, config checks, data parallelism.

All data is generated here (scripted epsilon-greedy Darkroom histories), never read from
/work/data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dicp_jax.checkpoint import ConfigMismatch, read_config
from dicp_jax.commands.train import build_configs
from dicp_jax.config import ConfigError
from dicp_jax.data import prepare, return_to_go
from dicp_jax.methods.ad import loss as losses
from dicp_jax.methods.ad import window
from dicp_jax.model import ModelConfig
from dicp_jax.reporting import Recorder
from dicp_jax.testing import synthetic_history
from dicp_jax.train import TrainConfig, load_trained, train
from dicp_jax.validate import after_reward, goal_seen

TINY = ModelConfig(n_transit=12, width=16, n_layers=1, n_heads=2, mlp=32)
QUICK = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, steps_per_call=2,
                    eval_every=2, eval_windows=4, ckpt_every=2)


@pytest.fixture(scope="module")
def all_hist():
    """Tasks 3, 40, 77 (train), 10 (test), 70 (overfit): 4 streams of 100 steps each."""
    return synthetic_history("darkroom", [3, 40, 77, 10, 70], 4, 100, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def hist(all_hist):
    return (jax.tree.map(lambda a: a[:3, :2], all_hist),
            jax.tree.map(lambda a: a[3:4, :2], all_hist))


def test_return_to_go():
    r = np.array([0, 1, 1, 0, 1, 0], np.float32)
    d = np.array([0, 0, 1, 0, 0, 1], bool)
    np.testing.assert_array_equal(return_to_go(r, d), [2, 2, 1, 1, 1, 0])


def test_window_tokens_handle_episode_boundaries(hist):
    data = prepare(hist[0])
    tok, tg = window(data, 0, 0, 15, 10)  # episode ends at step 19 -> reset at step 20
    assert tok.step.tolist() == sorted(list(range(10)) * 2)
    first = np.asarray(tok.first[0::2])
    assert first.tolist() == [False] * 5 + [True] + [False] * 4
    np.testing.assert_array_equal(tok.prev_reward[0::2][1:], tg.reward[:-1])
    np.testing.assert_array_equal(tok.obs[0::2][5], [4, 4])  # reset obs, not next_obs[19]
    tok0, _ = window(data, 0, 0, 0, 4)
    assert bool(tok0.first[0]) and float(tok0.prev_reward[0]) == 0.0
    seen = goal_seen(jnp.array([[1, 1], [2, 2], [1, 1], [1, 1]]), jnp.array([1.0, 0, 0, 1]))
    assert seen.tolist() == [False, False, True, True]
    assert after_reward(jnp.array([0.0, 1, 0, 1, 0])).tolist() == [False, False, True, True, True]


def test_overfit_one_task(tmp_path, all_hist):
    """One task's history: next obs and reward become near-perfect within a few hundred
    steps (validation on the same task), training on sequences twice the attention window
    (the sliding-window mask of cached inference)."""
    h = jax.tree.map(lambda a: a[4:], all_hist)
    cfg = TrainConfig(steps=300, batch_size=8, lr=1e-2, warmup_steps=30, steps_per_call=100,
                      eval_every=300, eval_windows=32, ckpt_every=300, seq_windows=2)
    model = ModelConfig(n_transit=20, width=32, n_layers=2, n_heads=2, mlp=64, dropout=0.0,
                        attn_dropout=0.0)
    val = train("darkroom", "synthetic", tmp_path / "run", cfg, model, histories=(h, h))
    assert val["obs_acc"] > 0.97, val
    assert val["reward_acc"] > 0.97, val
    assert (tmp_path / "run" / "metrics.png").exists()
    with pytest.raises(ConfigError, match="seq_windows must be >= 1"):
        train("darkroom", "synthetic", tmp_path / "run2", replace(cfg, seq_windows=0), model,
              histories=(h, h))


def test_resume_is_bit_for_bit_and_config_checked(tmp_path, hist):
    run = tmp_path / "a"
    rec = Recorder()
    train("darkroom", "synthetic", run, QUICK, TINY, histories=hist, report=rec)
    # the library reports through the callback: progress per call, each validation's line
    assert [e.data["done"] for e in rec.events if e.kind == "progress"] == [0, 2, 4]
    assert [m.split(":")[0] for m in rec.messages("metrics")] == ["step 2", "step 4"]
    assert all("loss" in e.data for e in rec.events if e.kind == "metrics" and not e.message)
    full = load_trained(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
    shutil.rmtree(run / "checkpoints" / "4")  # as if the run died after step 2
    with pytest.raises(FileExistsError):
        train("darkroom", "synthetic", run, QUICK, TINY, histories=hist)
    rec = Recorder()
    train("darkroom", "synthetic", run, QUICK, TINY, histories=hist, resume=True, report=rec)
    assert [e.data["done"] for e in rec.events if e.kind == "progress"] == [2, 4]
    a, b = full, load_trained(run)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(jax.tree.leaves(a.params)[0],
                              jax.tree.leaves(load_trained(run, step=2).params)[0])
    assert a.env_name == "darkroom" and a.model_cfg == TINY and a.codec.obs.head_size == 81
    wide = ModelConfig(**{**TINY.__dict__, "width": 32})
    with pytest.raises(ConfigMismatch, match=r"model.width: saved 16 vs requested 32"):
        train("darkroom", "synthetic", run, QUICK, wide, histories=hist, resume=True)
    with pytest.raises(ConfigMismatch, match="env_name"):
        train("darkroom_permuted", "synthetic", run, QUICK, TINY, histories=hist, resume=True)
    # a run written before a model field existed loads as the model it was trained as
    saved = json.loads((run / "config.json").read_text())
    del saved["codec"]  # a run written before codecs owned the grid options, and before
    saved["model"]["obs_mix"] = True  # factored_obs existed (its absence meant False)
    (run / "config.json").write_text(json.dumps(saved))
    migrated = read_config(run)
    assert migrated["codec"] == {"factored_obs": False, "obs_mix": True}
    assert "obs_mix" not in migrated["model"]


def test_ad_baseline_is_same_path(hist):
    """lambda = 0 leaves the dynamics heads without gradient (plain AD)."""
    from dicp_jax import codecs
    from dicp_jax.data import gather_windows, sample_indices
    from dicp_jax.model import DICPTransformer, init_params

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    data = jax.tree.map(jnp.asarray, prepare(hist[0]))
    get = jax.jit(lambda d, i: gather_windows(d, mesh, *i, 12, window))
    tok, tg = get(data, sample_indices(jax.random.PRNGKey(0), 4, 3, 2, 100, 12))
    model = DICPTransformer(TINY, codecs.for_name("darkroom"))
    params = init_params(model, jax.random.PRNGKey(0))
    g = jax.jit(jax.grad(lambda p: losses(model, p, tok, tg, jax.random.PRNGKey(1), 0.0,
                                          deterministic=True)[0]))(params)
    assert float(jnp.abs(g["obs_head"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["action_head"]["kernel"]).max()) > 0.0
    # a task with imitate = 0 teaches the dynamics heads only
    data0 = data._replace(imitate=data.imitate.at[:].set(0.0))
    tok0, tg0 = get(data0, sample_indices(jax.random.PRNGKey(0), 4, 3, 2, 100, 12))
    assert float(tg0.imitate.max()) == 0.0 and float(tg.imitate.min()) == 1.0
    loss = jax.jit(lambda p, t: losses(model, p, tok0, t, jax.random.PRNGKey(1), 1.0,
                                       deterministic=True))
    (_, m0), (_, m1) = loss(params, tg0), loss(params, tg)
    assert float(m0["action_loss"]) == 0.0 and float(m1["action_loss"]) > 0.0
    np.testing.assert_allclose(m0["obs_loss"], m1["obs_loss"])
    g0 = jax.jit(jax.grad(lambda p: loss(p, tg0)[0]))(params)
    assert float(jnp.abs(g0["action_head"]["kernel"]).max()) == 0.0


def test_true_context_masks_only_windows_cut_by_the_sequence_start(hist):
    """A position is trained iff its sequence starts the stream or it sees n_transit - 1
    earlier steps; masked targets do not move the loss; stream starts are sampled."""
    from dicp_jax import codecs
    from dicp_jax.data import sample_indices
    from dicp_jax.model import DICPTransformer, init_params
    from dicp_jax.train import context_mask

    m = np.asarray(context_mask(jnp.array([0, 7]), seq=6, n_transit=3))
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    data = jax.tree.map(jnp.asarray, prepare(hist[0]))
    offset = jnp.array([0, 30, 51])
    tok, tg = jax.vmap(lambda o: window(data, 0, 1, o, 24))(offset)  # n_transit 12: 2 windows
    model = DICPTransformer(TINY, codecs.for_name("darkroom"))
    params = init_params(model, jax.random.PRNGKey(0))
    w = context_mask(offset, 24, TINY.n_transit)
    f = jax.jit(lambda t: losses(model, params, tok, t, jax.random.PRNGKey(1), 1.0, True, w)[0])
    moved = tg._replace(action=tg.action.at[1, :11].set((tg.action[1, :11] + 1) % 5))
    assert float(f(moved)) == float(f(tg))  # masked positions: no effect
    moved = tg._replace(action=tg.action.at[1, 11].set((tg.action[1, 11] + 1) % 5))
    assert float(f(moved)) != float(f(tg))  # first full window: counted
    starts = sample_indices(jax.random.PRNGKey(2), 4000, 3, 2, 100, 24, start_prob=0.25)[2]
    assert 0.22 < float((starts == 0).mean()) < 0.28


def test_cli_rejects_bad_keys_and_values():
    with pytest.raises(ConfigError, match="valid train keys"):
        build_configs("darkroom", "cpu", ["nope=1"])
    with pytest.raises(ConfigError, match="not a valid int"):
        build_configs("darkroom", "cpu", ["width=wide"])
    with pytest.raises(ConfigError, match="valid: "):
        build_configs("darkroomz", "cpu", [])
    t, m, _ = build_configs("darkroom", "paper", ["width=64", "steps=7"], 0.0, 3)
    assert (m.width, t.steps, t.dynamics_strength, t.split_seed) == (64, 7, 0.0, 3)
    from dicp_jax.cli import main

    assert main(["train", "--env", "darkroom", "--data", "/nonexistent", "--out", "/tmp/x",
                 "--set", "bogus=1"]) == 2


SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh
    from dicp_jax import codecs
    from dicp_jax.data import prepare, to_device
    from dicp_jax.model import ModelConfig
    from dicp_jax.testing import synthetic_history
    from dicp_jax.train import TrainConfig, init_state, make_train_call
    assert len(jax.devices()) == 4
    h = synthetic_history("darkroom", [3, 40, 77, 10, 20], 2, 60, jax.random.PRNGKey(0))
    m = ModelConfig(n_transit=12, width=16, n_layers=1, n_heads=2, mlp=32)
    c = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1)
    codec = codecs.for_name("darkroom")
    out = {}
    for n in (1, 4):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        data = to_device(prepare(h, n), mesh)  # 5 tasks: padded to 8 on 4 devices
        assert data.obs.shape[0] == (5 if n == 1 else 8)
        state = init_state(m, codec, c, mesh)
        call = make_train_call(m, codec, c, mesh, (5, 2, 60))
        state, met = call(state, data, 3)
        out[n] = jax.device_get((state["params"], met))
    for x, y in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[4])):
        np.testing.assert_allclose(x, y, atol=2e-5, rtol=1e-4)
    print("OK")
""")


@pytest.mark.devices
def test_data_parallel_matches_single_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SCRIPT.replace("{TMP}", str(tmp_path))],
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_counterfactual_targets(tmp_path, hist):
    """Another action than the learner's at every step, with the env's true outcome; the
    draw depends on the task, not the batch; Key-to-Door (key state hidden) is refused.
    Training on them runs and validation reports the counterfactual metrics."""
    import dicp_envs
    from dicp_envs.grid import MOVES
    from dicp_jax.data import counterfactuals

    train_h, test_h = hist
    idx = [3, 40, 77]
    a, r, nobs = counterfactuals("darkroom", train_h, idx, seed=0)
    obs, act = np.asarray(train_h.obs, np.int32), np.asarray(train_h.action)
    assert a.shape == act.shape and (a != act).all() and ((a >= 0) & (a < 5)).all()
    np.testing.assert_array_equal(nobs, np.clip(obs + MOVES[a.astype(np.int64)], 0, 8))
    goals = np.asarray(dicp_envs.make("darkroom")[0].task_list())[idx]
    np.testing.assert_array_equal(r, (nobs == goals[:, None, None]).all(-1))
    alone = counterfactuals("darkroom", jax.tree.map(lambda x: x[1:2], train_h), [40], seed=0)
    np.testing.assert_array_equal(alone[0][0], a[1])
    with pytest.raises(ConfigError, match="observation_is_state"):
        counterfactuals("dark_key_to_door", train_h, [0, 1, 2])
    split = {"seed": None, "train": idx, "test": [10]}
    val = train("darkroom", "synthetic", tmp_path / "cf", replace(QUICK, counterfactual=1.0),
                TINY, histories=(train_h, test_h, split))
    assert 0.0 <= val["cf_reward_acc"] <= 1.0 and "cf_false_alarm" in val
    logged = [json.loads(x) for x in (tmp_path / "cf" / "metrics.jsonl").read_text().splitlines()]
    assert any("cf_reward_loss" in m for m in logged)
    with pytest.raises(ConfigError, match="task index"):
        train("darkroom", "synthetic", tmp_path / "cf2", replace(QUICK, counterfactual=1.0),
              TINY, histories=(train_h, test_h, {"seed": None}))
