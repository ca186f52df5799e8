"""Determinism of collection (alone / batched / 4 devices), records, resume after a crash."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dicp_envs
from dicp_jax import collect, history
from dicp_jax.ppo import PPOConfig

# One xdist worker for the whole module: the fixture and the compiled programs (cached in
# dicp_jax.collect per chunk size) are then built once; XLA CPU compiles dominate the time.
pytestmark = pytest.mark.xdist_group("collect")

TINY = PPOConfig(n_streams=4, steps_per_stream=40, n_steps=20, minibatch_size=20, n_epochs=2)
IDX = np.array([5, 17, 40, 80])


@pytest.fixture(scope="module")
def env():
    return dicp_envs.make("darkroom")[0]


@pytest.fixture(scope="module")
def batch(env):
    return collect.collect(env, IDX, TINY)


def test_records_are_consistent(env, batch):
    hist, rets = batch
    assert hist.obs.shape == (4, 4, 40, 2) and hist.obs.dtype == np.int8
    assert hist.action.dtype == np.int8 and hist.reward.dtype == np.float16
    assert rets.shape == (4, 2)
    # done exactly at the horizon; next obs continues the stream inside an episode,
    # and the stream restarts at the centre after an episode ends
    assert np.array_equal(hist.done[0, 0], (np.arange(40) % 20) == 19)
    inside = ~hist.done[..., :-1]
    assert np.array_equal(hist.obs[:, :, 1:][inside], hist.next_obs[:, :, :-1][inside])
    assert np.all(hist.obs[:, :, 20] == 4)
    goals = np.asarray(env.task_list())[IDX][:, None, None]
    assert np.array_equal(hist.reward == 1, np.all(hist.next_obs == goals, -1))
    np.testing.assert_allclose(rets[:, 0], hist.reward[:, :, :20].astype(float).sum(-1).mean(1),
                               rtol=1e-3)


def test_same_seed_same_history(env, batch):
    again, _ = collect.collect(env, IDX, TINY)
    assert all(np.array_equal(a, b) for a, b in zip(batch[0], again, strict=True))
    other, _ = collect.collect(env, IDX, PPOConfig(**{**TINY.__dict__, "seed": 1}))
    assert not np.array_equal(batch[0].action, other.action)


def test_task_alone_equals_task_in_batch(env, batch):
    alone, _ = collect.collect(env, IDX[2:3], TINY)
    assert all(np.array_equal(a[0], b[2]) for a, b in zip(alone, batch[0], strict=True))


def test_four_devices_same_histories(tmp_path, batch):
    code = textwrap.dedent(f"""
        import numpy as np, jax, dicp_envs
        from dicp_jax import collect
        from dicp_jax.ppo import PPOConfig
        assert len(jax.devices()) == 4
        env = dicp_envs.make("darkroom")[0]
        h, r = collect.collect(env, np.array({IDX.tolist()}), PPOConfig(**{TINY.__dict__!r}))
        np.savez({str(tmp_path / "h.npz")!r}, *h, r)
    """)
    env_vars = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, "-c", code], env=env_vars, check=True, timeout=300)
    got = np.load(tmp_path / "h.npz")
    for i, a in enumerate(batch[0]):
        assert np.array_equal(got[f"arr_{i}"], a)
    assert np.array_equal(got["arr_5"], batch[1])


def test_resume_after_interruption(tmp_path, monkeypatch, env):
    out = tmp_path / "d"
    real = history.DatasetWriter.write_chunk
    calls = []

    def crash_on_second(self, *a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(history.DatasetWriter, "write_chunk", crash_on_second)
    kw = dict(n_tasks=4, chunk_size=1, progress=False)  # chunk 1: reuses the "alone" program
    with pytest.raises(KeyboardInterrupt):
        collect.collect_dataset("darkroom", out, TINY, **kw)
    assert not (out / "metadata.json").exists()
    with pytest.raises(history.DatasetError, match="--resume"):
        collect.collect_dataset("darkroom", out, TINY, **kw)
    monkeypatch.setattr(history.DatasetWriter, "write_chunk", real)
    meta = collect.collect_dataset("darkroom", out, TINY, resume=True, **kw)
    stored = [t for s in meta["shards"] for t in s["task_index"]]
    assert sorted(stored) == list(range(4)) and len(meta["shards"]) == 4
    hist, dm = history.load_history(out, env_name="darkroom")
    assert dm.task_index.tolist() == list(range(4)) and dm.ppo_config() == TINY
    direct, rets = collect.collect(env, np.arange(4), TINY)
    assert all(np.array_equal(a, b) for a, b in zip(hist, direct, strict=True))
    np.testing.assert_array_equal(dm.episode_returns, rets)
