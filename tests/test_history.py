"""Dataset round trip, partial loading and every corruption case (synthetic data, no PPO)."""

import json

import numpy as np
import pytest

from dicp_jax.history import FORMAT_VERSION, DatasetError, DatasetWriter, History, load_history

S, T = 3, 8


def fake(task_index):
    rng = np.random.default_rng(int(task_index[0]))
    n = len(task_index)
    hist = History(
        obs=rng.integers(0, 9, (n, S, T, 2)).astype(np.int8),
        action=rng.integers(0, 5, (n, S, T)).astype(np.int8),
        reward=rng.integers(0, 2, (n, S, T)).astype(np.float16),
        next_obs=rng.integers(0, 9, (n, S, T, 2)).astype(np.int8),
        done=(np.arange(T) % 4 == 3)[None, None].repeat(n, 0).repeat(S, 1),
    )
    return hist, rng.random((n, 2)).astype(np.float32)


def header(idx):
    return dict(env_name="darkroom", env_kwargs={}, split="all", task_index=list(idx),
                tasks=[[i // 9, i % 9] for i in idx], source="ppo",
                source_config={"n_streams": S}, seed=0,
                version="test")


def write(path, chunks):
    idx = [i for c in chunks for i in c]
    w = DatasetWriter(path, header(idx))
    for c in chunks:
        w.write_chunk(np.asarray(c), *fake(c))
    w.finalize()
    return idx


def test_round_trip_and_partial(tmp_path):
    chunks = [[7, 3], [50, 11], [2]]
    write(tmp_path / "d", chunks)
    hist, meta = load_history(tmp_path / "d", env_name="darkroom")
    full = [fake(c) for c in chunks]
    want = History(*(np.concatenate([h[k] for h, _ in full]) for k in range(5)))
    for a, b in zip(hist, want, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert meta.task_index.tolist() == [7, 3, 50, 11, 2]
    assert np.array_equal(meta.episode_returns, np.concatenate([r for _, r in full]))
    assert meta.format_version == FORMAT_VERSION and meta.n_tasks_total == 5

    part, pm = load_history(tmp_path / "d", task_index=[11, 7], streams=[2, 0], steps=5)
    assert part.obs.shape == (2, 2, 5, 2) and part.done.shape == (2, 2, 5)
    assert np.array_equal(part.obs[0], want.obs[3][[2, 0], :5])
    assert np.array_equal(part.reward[1], want.reward[0][[2, 0], :5])
    assert pm.task_index.tolist() == [11, 7] and pm.tasks.tolist() == [[1, 2], [0, 7]]
    one, _ = load_history(tmp_path / "d", task_index=2, streams=1, steps=slice(2, 6))
    assert np.array_equal(one.action, want.action[4:5, 1:2, 2:6])


def test_errors(tmp_path):
    d = tmp_path / "d"
    write(d, [[1, 2], [3]])
    with pytest.raises(DatasetError, match="dark_key_to_door"):
        load_history(d, env_name="dark_key_to_door")
    with pytest.raises(DatasetError, match=r"tasks \[9\]"):
        load_history(d, task_index=[9])
    # checksum mismatch: flip one byte of a payload
    f = d / "shards" / "00001" / "reward.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        load_history(d)
    assert str(f) in str(e.value)
    load_history(d, task_index=[1, 2])  # the intact shard still loads
    # missing file
    (d / "shards" / "00000" / "obs.npy").unlink()
    with pytest.raises(DatasetError, match="missing file") as e:
        load_history(d, task_index=[1])
    assert "obs.npy" in str(e.value)
    # unknown format version
    meta = json.loads((d / "metadata.json").read_text())
    meta["format_version"] = 99
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="unknown format version 99"):
        load_history(d)
    # missing metadata (unfinished collection)
    (d / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="metadata.json: missing file"):
        load_history(d)
    with pytest.raises(DatasetError, match="no such dataset"):
        load_history(tmp_path / "nope")


def test_writer_guards(tmp_path):
    d = tmp_path / "d"
    w = DatasetWriter(d, header([1, 2, 3]))
    w.write_chunk(np.asarray([1, 2]), *fake([1, 2]))
    with pytest.raises(DatasetError, match="missing"):
        w.finalize()
    with pytest.raises(DatasetError, match="--resume"):
        DatasetWriter(d, header([1, 2, 3]))
    with pytest.raises(DatasetError, match="differs in"):
        DatasetWriter(d, {**header([1, 2, 3]), "seed": 1}, resume=True)
    (d / "shards" / ".tmp-00001").mkdir()  # an interrupted shard write is discarded
    w = DatasetWriter(d, header([1, 2, 3]), resume=True)
    assert w.done_tasks() == {1, 2}
    w.write_chunk(np.asarray([3]), *fake([3]))
    w.finalize()
    assert load_history(d)[1].task_index.tolist() == [1, 2, 3]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        DatasetWriter(tmp_path / "other", header([1]))
