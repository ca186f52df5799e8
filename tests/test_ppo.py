"""PPO pieces against plain-numpy references, and end-to-end improvement on Darkroom."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dicp_envs
from dicp_jax import collect
from dicp_jax.sources import ppo


def test_gae_matches_sb3_loop():
    rng = np.random.default_rng(0)
    T, S = 7, 3
    r, v, last = rng.random((T, S)), rng.random((T, S)), rng.random(S)
    done = rng.random((T, S)) < 0.3
    cfg = ppo.PPOConfig()
    adv, ret = ppo.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(done), jnp.asarray(last), cfg)
    # SB3 RolloutBuffer.compute_returns_and_advantage, with done[t] = episode_starts[t + 1]
    want, acc = np.zeros((T, S)), np.zeros(S)
    for t in reversed(range(T)):
        nxt = last if t == T - 1 else v[t + 1]
        nt = 1.0 - done[t]
        delta = r[t] + cfg.gamma * nxt * nt - v[t]
        acc = delta + cfg.gamma * cfg.gae_lambda * nt * acc
        want[t] = acc
    np.testing.assert_allclose(adv, want, rtol=1e-5)
    np.testing.assert_allclose(ret, want + v, rtol=1e-5)


def test_init_matches_sb3_policy():
    cfg = ppo.PPOConfig()
    p = ppo.init_params(jax.random.PRNGKey(0), 2, 5, cfg)
    assert [w.shape for w, _ in p["pi"]] == [(2, 64), (64, 64), (64, 5)]
    assert [w.shape for w, _ in p["vf"]] == [(2, 64), (64, 64), (64, 1)]
    w = np.asarray(p["pi"][1][0])
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)  # orthogonal, gain sqrt 2
    assert np.abs(np.asarray(p["pi"][2][0])).max() < 0.02  # policy head gain 0.01
    assert all(np.all(np.asarray(b) == 0) for _, b in p["pi"] + p["vf"])
    logits = ppo.policy_logits(p, jnp.array([[4, 4], [0, 8]]))
    assert logits.shape == (2, 5) and float(jnp.abs(logits).max()) < 0.5


@pytest.mark.parametrize("shape", [(64, 64), (2, 64), (64, 5), (7, 3)])
def test_orthogonal_matches_qr_of_the_same_draw(shape):
    """The in-jit Gram-Schmidt initializer equals the library's QR recipe (numpy's QR here,
    sign-fixed so R has a positive diagonal) on the same normal draw."""
    key, gain = jax.random.PRNGKey(3), 1.7
    got = np.asarray(jax.jit(ppo.orthogonal, static_argnums=(1, 2))(key, shape, gain))
    n_rows, n_cols = shape
    a = np.asarray(jax.random.normal(key, (n_cols, n_rows) if n_rows < n_cols else shape))
    q, r = np.linalg.qr(a.astype(np.float64))
    q = q * np.sign(np.diag(r))
    want = gain * (q.T if n_rows < n_cols else q)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_paper_configs():
    d = ppo.paper_config("darkroom")
    assert (d.n_updates, d.n_minibatches, d.n_epochs) == (50, 40, 20)
    k = ppo.paper_config("dark_key_to_door")
    assert (k.n_updates, k.n_minibatches, k.n_epochs) == (20, 50, 10)
    p = ppo.paper_config("darkroom_permuted")
    assert (p.n_updates, p.n_minibatches, p.n_epochs) == (20, 100, 20)


def test_ppo_improves_on_darkroom():
    """Paper PPO settings, 20 streams x 20 episodes, three goals near the start."""
    env, _ = dicp_envs.make("darkroom")
    cfg = ppo.paper_config("darkroom", n_streams=20, steps_per_stream=400)
    idx = np.array([25, 60, 42])  # goals (2, 7), (6, 6), (4, 6)
    hist, rets = collect.collect(env, idx, cfg)
    opt = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[idx])))
    frac = rets / opt[:, None]  # [3, 20]
    first, last = frac[:, :3].mean(), frac[:, -3:].mean()
    assert last > first + 0.3, frac.round(2)
    # recorded rewards are the env's, not the bootstrapped ones
    assert set(np.unique(hist.reward).tolist()) <= {0.0, 1.0}
