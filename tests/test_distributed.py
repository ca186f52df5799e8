"""Multi-process runs (``jax.distributed``) on this machine: 2 processes x 2 CPU devices
against 1 process x 4 devices, through the ``dicp`` CLI as a user launches it.

One pipeline (module fixture) runs every command once, small enough for CI: a reference
collection; the same collection as two processes where process 1 dies after its first
chunk, then the same command with ``--resume``; training on both datasets (1 process x 4
devices and 2 x 2); the meta-test of one checkpoint in one process and in 2 x 2. The
subprocesses share a persistent compilation cache, so the resumed run's process 0 reuses
the programs of the interrupted one (JAX writes the cache from process 0 only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dicp_jax.cli import main

pytestmark = pytest.mark.xdist_group("distributed")

ROOT = Path(__file__).resolve().parents[1]
PPO = ["n_streams=4", "steps_per_stream=40", "n_steps=20", "minibatch_size=20", "n_epochs=2"]
# 8 tasks, 2 per chunk and 1 per block: each process of a 2-process run stores 2 chunks
COLLECT = ["collect", "--env", "darkroom", "--tasks", "8", "--block", "1", "--chunk-size",
           "2", "--no-progress", *[a for s in PPO for a in ("--set", s)]]
TRAIN_SETS = ["n_transit=8", "width=16", "n_layers=1", "n_heads=2", "mlp=32", "seq_windows=1",
              "steps=4", "steps_per_call=2", "batch_size=4", "eval_windows=8",
              "eval_every=4", "ckpt_every=4", "min_source_return=0",
              "dynamics_from_dropped=false"]
TRAIN = ["train", "--env", "darkroom", "--no-progress",
         *[a for s in TRAIN_SETS for a in ("--set", s)]]
EVAL = ["eval", "--planner", "policy", "--episodes", "2", "--tasks", "2"]
# Process 1 of the interrupted collection: the real CLI, ended abruptly after its first
# stored chunk (as a killed or crashed host would be).
DIE_AFTER_FIRST_CHUNK = """
import os, sys
from dicp_jax import history
write = history.DatasetWriter.write_chunk
def write_then_die(self, *args):
    write(self, *args)
    os._exit(9)
history.DatasetWriter.write_chunk = write_then_die
from dicp_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONUNBUFFERED": "1"}


def dicp(args: list[str], cache: Path, devices: int = 4, script: str | None = None,
         timeout: float = TIMEOUT) -> subprocess.Popen:
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m",
                                                          "dicp_jax.cli"]
    return subprocess.Popen(head + args, env=_env(devices, cache), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit code, stdout + stderr without the runtime's own log lines) of each process."""
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        lines = [ln for ln in (so + se).splitlines()
                 if not ln.startswith(("[Gloo]", "E1", "W1", "I1", "F1"))]
        out.append((p.returncode, "\n".join(lines)))
    return out


def one(args: list[str], cache: Path) -> str:
    [(rc, text)] = finish([dicp(args, cache)])
    assert rc == 0, text
    return text


def two(args: list[str], cache: Path, scripts=(None, None)) -> list[tuple[int, str]]:
    """The same command as processes 0 and 1 of one run (2 CPU devices each)."""
    layout = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    return finish([dicp(args + layout + ["--process-id", str(i)], cache, 2, scripts[i])
                   for i in range(2)])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    cache = root / "xla_cache"
    w: dict = {"root": root}
    # References that need no particular device count run in this process (one device):
    # a history and a meta-test return depend on the task only (test_collect, test_evaluate)
    assert main(COLLECT + ["--out", str(root / "ref")]) == 0
    w["killed"] = two(COLLECT + ["--out", str(root / "data")], cache,
                      scripts=(None, DIE_AFTER_FIRST_CHUNK))
    w["shards_after_kill"] = sorted(p.name for p in (root / "data" / "shards").iterdir())
    w["resumed"] = two(COLLECT + ["--out", str(root / "data"), "--resume"], cache)
    one(TRAIN + ["--data", str(root / "ref"), "--out", str(root / "run4")], cache)
    w["train2"] = two(TRAIN + ["--data", str(root / "data"), "--out", str(root / "run22")],
                      cache)
    assert main(EVAL + ["--run", str(root / "run4"), "--out", str(root / "eval4.json")]) == 0
    w["eval2"] = two(EVAL + ["--run", str(root / "run4"), "--out", str(root / "eval22.json")],
                     cache)
    return w


@pytest.mark.devices
def test_a_killed_process_is_resumed_into_the_single_process_dataset(pipeline):
    from dicp_jax.history import load_history

    root = pipeline["root"]
    (rc0, text0), (rc1, _) = pipeline["killed"]
    assert rc1 == 9  # died after its first chunk
    assert rc0 == 1 and "another process of the run failed or left" in text0, text0
    assert "Traceback" not in text0
    # process 0 stored its 2 chunks, process 1 one of its 2; no metadata yet
    assert pipeline["shards_after_kill"] == ["00000-p0", "00000-p1", "00001-p0"]
    assert [rc for rc, _ in pipeline["resumed"]] == [0, 0], pipeline["resumed"]
    meta = json.loads((root / "data" / "metadata.json").read_text())
    stored = [t for s in meta["shards"] for t in s["task_index"]]
    assert sorted(stored) == sorted(meta["task_index"]) and len(set(stored)) == 8
    ref, ref_meta = load_history(root / "ref")
    got, got_meta = load_history(root / "data")
    for a, b, name in zip(ref, got, ref._fields, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name  # bit for bit
    np.testing.assert_array_equal(ref_meta.episode_returns, got_meta.episode_returns)


@pytest.mark.devices
def test_training_over_two_processes_gives_the_losses_of_one_with_four_devices(pipeline):
    from dicp_jax.reporting import read_metrics
    from dicp_jax.train import load_trained

    assert [rc for rc, _ in pipeline["train2"]] == [0, 0], pipeline["train2"]
    # each process read only the histories its devices hold (process 0 reports its share:
    # the first half of the device-padded task axis)
    text0 = pipeline["train2"][0][1]
    assert "process 0 holds train tasks 0-" in text0 and "(loaded only those)" in text0, text0
    root = pipeline["root"]
    one_proc, two_proc = (read_metrics(root / r) for r in ("run4", "run22"))
    # process 0 alone wrote the record: one line per call and validation, as with one
    assert [r["step"] for r in one_proc] == [r["step"] for r in two_proc] == [2, 4, 4]
    for a, b in zip(one_proc, two_proc, strict=True):
        if "loss" in a:
            # same data, same windows; only the cross-device sums (gloo vs in-process)
            # may round differently
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    # one checkpoint, written by both processes through orbax, read by one process
    p4, p22 = load_trained(root / "run4").params, load_trained(root / "run22").params
    import jax

    for x, y in zip(jax.tree.leaves(p4), jax.tree.leaves(p22), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.devices
def test_the_meta_test_gives_the_same_returns_and_process_0_alone_writes(pipeline):
    assert [rc for rc, _ in pipeline["eval2"]] == [0, 0], pipeline["eval2"]
    root = pipeline["root"]
    single = json.loads((root / "eval4.json").read_text())
    multi = json.loads((root / "eval22.json").read_text())
    assert multi["task_index"] == single["task_index"]
    assert multi["returns"] == single["returns"]  # per-task programs: exactly equal
    (_, text0), (_, text1) = pipeline["eval2"]
    assert "meta-test done" in text0 and "meta-test done" not in text1


def test_an_inconsistent_layout_is_a_usage_error_before_anything_connects(capsys):
    t0 = time.perf_counter()
    rc = main(["collect", "--env", "darkroom", "--tasks", "2", "--dry-run", "--coordinator",
               "localhost:1234", "--num-processes", "2", "--process-id", "2"])
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert "--process-id 2 is out of range for --num-processes 2" in capsys.readouterr().err
    assert main(["collect", "--env", "darkroom", "--num-processes", "2"]) == 2
    assert "need --coordinator" in capsys.readouterr().err
    assert main(["train", "--env", "darkroom", "--data", "d", "--out", "o", "--coordinator",
                 "nohost", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_an_unreachable_coordinator_ends_with_a_message_not_a_hang(tmp_path):
    args = ["collect", "--env", "darkroom", "--tasks", "2", "--out", str(tmp_path / "d"),
            "--coordinator", f"localhost:{free_port()}", "--num-processes", "2",
            "--process-id", "1", "--coordinator-timeout", "3"]
    t0 = time.perf_counter()
    [(rc, text)] = finish([dicp(args, tmp_path / "cache", 2)])
    assert rc == 1, text
    assert "could not join the coordinator" in text and "within 3 s" in text, text
    assert "Traceback" not in text
    assert time.perf_counter() - t0 < 60
