"""Determinism of collection (any grouping of tasks, 1-4 devices), records, resume."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dicp_envs
from dicp_jax import collect
from dicp_jax.reporting import Recorder
from dicp_jax.sources.ppo import PPOConfig

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
    rec = Recorder()
    again, _ = collect.collect(env, IDX, TINY, report=rec)
    assert all(np.array_equal(a, b) for a, b in zip(batch[0], again, strict=True))
    # progress goes through the callback: tasks done after each chunk, up to all of them
    done = [e.data["done"] for e in rec.events if e.kind == "progress"]
    assert done[0] == 0 and done[-1] == len(IDX) and done == sorted(done)
    other, _ = collect.collect(env, IDX, PPOConfig(**{**TINY.__dict__, "seed": 1}))
    assert not np.array_equal(batch[0].action, other.action)


def test_task_alone_equals_task_in_batch(env, batch):
    alone, _ = collect.collect(env, IDX[2:3], TINY)
    assert all(np.array_equal(a[0], b[2]) for a, b in zip(alone, batch[0], strict=True))


def test_default_chunks_bound_the_loss():
    """An interrupt loses at most a quarter of a default run (rounded up to whole blocks per
    device), and every chunk is made of whole blocks on every device."""
    env = dicp_envs.make("darkroom")[0]
    for n_tasks, n_dev, block in ((81, 2, 4), (81, 1, 4), (6561, 2, 4), (120, 4, 1), (3, 2, 4)):
        c = collect.chunk_size_for(env, TINY, n_tasks, n_dev, block=block)
        assert c % (n_dev * block) == 0
        assert c <= max(n_dev * block, -(-n_tasks // collect.MIN_CHUNKS)), (n_tasks, c)
    assert collect.chunk_size_for(env, TINY, 81, 2, chunk_size=1, block=4) == 8


# The paper's PPO settings, shortened: the grouping bug (a task's history changed with how
# many tasks shared a device, and with the device count) did not show at TINY sizes, only
# from the first full update on. One subprocess per family with 4 CPU devices; compiled
# programs are shared between layouts (cached per device), which keeps this affordable.
LAYOUTS = textwrap.dedent("""
    import sys, numpy as np, jax, dicp_envs
    from dicp_jax import collect, history
    from dicp_jax.sources.ppo import paper_config
    env_name, steps, out, full = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    env = dicp_envs.make(env_name)[0]
    cfg = paper_config(env_name, steps_per_stream=steps)
    idx = np.array([4, 5, 6, 7, 8, 9])
    dev = jax.devices()
    runs = {"1 device, default chunks": (idx, collect.collect(env, idx, cfg, devices=dev[:1])),
            "2 devices, reversed": (idx[::-1], collect.collect(env, idx[::-1], cfg,
                                                                devices=dev[:2]))}
    if full:
        runs["1 device, one chunk"] = (idx, collect.collect(
            env, idx, cfg, devices=dev[:1], chunk_size=8))
        runs["4 devices, a task alone"] = (idx[2:3], collect.collect(env, idx[2:3], cfg,
                                                                     devices=dev))
        # killed after the first chunk, resumed: the remaining chunk holds other tasks
        real, calls = history.DatasetWriter.write_chunk, []
        def crash_on_second(self, *a):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(self, *a)
        history.DatasetWriter.write_chunk = crash_on_second
        kw = dict(task_index=idx, chunk_size=4, devices=dev[:1])
        try:
            collect.collect_dataset(env_name, out + ".d", cfg, **kw)
        except KeyboardInterrupt:
            pass
        history.DatasetWriter.write_chunk = real
        meta = collect.collect_dataset(env_name, out + ".d", cfg, resume=True, **kw)
        assert len(meta["shards"]) == 2 and meta["tasks_per_block"] == collect.DEFAULT_BLOCK
        h, dm = history.load_history(out + ".d", env_name=env_name)
        runs["interrupted, then resumed"] = (dm.task_index, (h, dm.episode_returns))
    np.savez(out, **{f"{k}|{i}": a for k, (order, (h, r)) in runs.items()
                     for i, a in enumerate((*h, r, order))})
""")


@pytest.mark.devices
@pytest.mark.parametrize("env_name,steps,full", [("darkroom", 200, True),
                                                 ("dark_key_to_door", 100, False),
                                                 ("darkroom_permuted", 100, False)])
def test_history_independent_of_grouping(tmp_path, env_name, steps, full):
    """A task's history is the same whatever its chunk, chunk size, position, device count
    (1, 2, 4), and whether its collection was interrupted and resumed."""
    out = str(tmp_path / "runs.npz")
    env_vars = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, "-c", LAYOUTS, env_name, str(steps), out, str(int(full))],
                   env=env_vars, check=True, timeout=600)
    got = np.load(out)
    runs = sorted({k.split("|")[0] for k in got.files})
    assert len(runs) == (5 if full else 2)
    ref = {int(t): i for i, t in enumerate(got["1 device, default chunks|6"])}
    for run in runs:
        for row, task in enumerate(got[f"{run}|6"]):
            for i in range(6):  # obs, action, reward, next_obs, done, episode returns
                assert np.array_equal(got[f"{run}|{i}"][row],
                                      got[f"1 device, default chunks|{i}"][ref[int(task)]]), (
                    run, int(task), i)
