"""The ``dicp`` CLI as a user meets it: every mistake a one-line error naming the problem,
the exit code that says what kind, no traceback, and nothing left behind by a refused start.

Refused starts come before any jit compile, so these run in seconds; the fixtures are a
tiny synthetic dataset and a tiny finished run (one orbax checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicp_jax.cli import main

pytestmark = pytest.mark.xdist_group("cli")

# A tiny model and schedule that the synthetic dataset (40 steps per stream) can train.
TINY = ["n_transit=8", "width=16", "n_layers=1", "n_heads=2", "mlp=32", "seq_windows=1",
        "steps=2", "batch_size=2", "min_source_return=0", "dynamics_from_dropped=false"]
SETS = [a for s in TINY for a in ("--set", s)]


def _dataset(path: Path, idx, env_name: str = "darkroom") -> Path:
    """Scripted histories written with the real writer (collection is test_collect's)."""
    import jax

    import dicp_envs
    from dicp_jax.collect import episode_returns
    from dicp_jax.history import DatasetWriter
    from dicp_jax.testing import synthetic_history

    env, _ = dicp_envs.make(env_name)
    idx = np.asarray(idx)
    hist = synthetic_history(env_name, idx, 2, 40, jax.random.PRNGKey(0))
    rets = jax.vmap(episode_returns, (0, 0, None))(hist.reward, hist.done, env.horizon)
    header = dict(env_name=env_name, env_kwargs={}, split="all", task_index=idx,
                  tasks=np.asarray(env.task_list())[idx], source="ppo", source_config={},
                  seed=0, version="test")
    writer = DatasetWriter(path, header)
    writer.write_chunk(idx, jax.tree.map(np.asarray, hist), np.asarray(rets))
    writer.finalize()
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Datasets and runs, good and broken, shared by every case (never modified by one)."""
    import jax
    from jax.sharding import Mesh

    from dicp_jax import checkpoint as ckpt
    from dicp_jax import codecs
    from dicp_jax.commands.train import build_configs
    from dicp_jax.train import init_state

    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "data": _dataset(root / "data", np.arange(81))}
    w["other_data"] = Path(shutil.copytree(w["data"], root / "other_data"))
    w["train_only"] = _dataset(root / "train_only", [0, 1, 2])  # no test task (seed 0)
    bad = Path(shutil.copytree(w["data"], root / "bad_header"))
    npy = next((bad / "shards").glob("*/obs.npy"))
    raw = bytearray(npy.read_bytes())
    raw[20:30] = b"(" * 10  # a header numpy's tokenizer cannot read
    npy.write_bytes(bytes(raw))
    w["bad_header"] = bad

    train_cfg, model_cfg, codec_cfg = build_configs("darkroom", "cpu", TINY)
    run = root / "run"
    run.mkdir()
    ckpt.write_config(run, ckpt.run_config("darkroom", model_cfg, train_cfg, w["data"],
                                           {"seed": None}, codec_cfg))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = init_state(model_cfg, codecs.for_name("darkroom"), train_cfg, mesh)
    ckpt.save(ckpt.manager(run, 3), 2, state)  # step 2 of 2: finished
    w["run"] = run

    w["no_ckpt"] = root / "no_ckpt"
    w["no_ckpt"].mkdir()
    shutil.copy(run / "config.json", w["no_ckpt"])
    corrupt = Path(shutil.copytree(run, root / "corrupt"))
    (corrupt / "checkpoints" / "2").rename(corrupt / "checkpoints" / "1")  # unfinished
    (corrupt / "checkpoints" / "1" / "default" / "_METADATA").write_text("garbage")
    w["corrupt"] = corrupt
    k2d = root / "k2d_run"
    k2d.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    (k2d / "config.json").write_text(json.dumps({**cfg, "env_name": "dark_key_to_door"}))
    w["k2d_run"] = k2d
    exp = root / "bad_exp.json"
    exp.write_text(json.dumps({"env": "darkroom", "train": {"stepz": 3},
                               "rows": [{"label": "AD", "planner": "policy"}]}))
    w["bad_exp"] = exp
    k2d_exp = root / "k2d_exp.json"
    k2d_exp.write_text(json.dumps({"env": "dark_key_to_door", "rows": [
        {"label": "DICP", "planner": "beam", "settings": {"reward_memory": True}}]}))
    w["k2d_exp"] = k2d_exp
    return w


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots for p in r.rglob("*")}


# (argv with {placeholders} from the world fixture, exit code, words the message must hold)
CASES = [
    # dicp eval
    (["eval", "--run", "{run}", "--episodes", "0"], 2, "episodes must be >= 1"),
    (["eval", "--run", "{run}", "--beam-size", "0"], 2, "beam_size must be >= 1"),
    (["eval", "--run", "{run}", "--depth", "-2"], 2, "depth must be >= 1"),
    (["eval", "--run", "{run}", "--depth", "0"], 2, "depth must be >= 1"),
    (["eval", "--run", "{run}", "--set", "plan_confidence=1.5"], 2, "plan_confidence must be in"),
    (["eval", "--run", "{run}", "--set", "beam_siz=3"], 2, "valid plan keys: beam_size, depth"),
    (["eval", "--run", "{run}", "--set", "bogus=1"], 2, "reward_memory"),
    (["eval", "--run", "{run}", "--set", "plan=3"], 2, "set the planner's fields by name"),
    (["eval", "--run", "{run}", "--set", "episodes=many"], 2, "not a valid int"),
    (["eval", "--run", "{run}", "--set", "before_reward=maybe"], 2, "before_reward"),
    (["eval", "--run", "{run}", "--tasks", "0"], 2, "--tasks must be positive"),
    (["eval", "--run", "{run}", "--tasks", "9"], 2, "has only 8 tasks"),
    (["eval", "--run", "{root}/missing"], 2, "does not exist"),
    (["eval", "--run", "{root}"], 2, "not a training run"),
    (["eval", "--run", "{no_ckpt}"], 2, "no checkpoint yet"),
    (["eval", "--run", "{k2d_run}", "--set", "reward_memory=true"], 2, "reward_memory"),
    (["eval", "--run", "{run}", "--out", "{root}/missing/out.json"], 2, "does not exist"),
    (["eval", "--run", "{corrupt}"], 1, "checkpoints/1: checkpoint unreadable"),
    # dicp collect
    (["collect", "--env", "darkroom", "--tasks", "0"], 2, "--tasks must be positive, got 0"),
    (["collect", "--env", "darkroom", "--tasks", "-7"], 2, "--tasks must be positive, got -7"),
    (["collect", "--env", "darkroom", "--tasks", "82"], 2, "has only 81 tasks"),
    (["collect", "--env", "darkroom", "--chunk-size", "0"], 2, "--chunk-size must be positive"),
    (["collect", "--env", "darkroom", "--chunk-size", "-3"], 2, "--chunk-size must be positive"),
    (["collect", "--env", "darkroom", "--block", "0"], 2, "--block must be positive"),
    (["collect", "--env", "darkroom", "--memory-budget", "-1"], 2, "--memory-budget must be"),
    (["collect", "--env", "darkroomz"], 2, "unknown env 'darkroomz'; valid: dark_key_to_door"),
    (["collect", "--env", "darkroom", "--set", "n_epoch=3"], 2, "valid keys: n_streams"),
    (["collect", "--env", "darkroom", "--set", "n_epochs=0"], 2, "n_epochs must be >= 1"),
    (["collect", "--env", "darkroom", "--set", "hidden=3"], 2, None),  # accepted: (3,)
    (["collect", "--env", "darkroom", "--out", "{data}"], 2, "already holds a dataset"),
    (["collect", "--env", "darkroom", "--out", "{root}", "--overwrite"], 2, "not a dataset"),
    (["collect", "--env", "darkroom", "--out", "{data}", "--resume"], 2, "cannot resume"),
    # dicp train
    (["train", "--env", "dark_key_to_door", "--data", "{data}", "--out", "r",
      "--set", "counterfactual=1"], 2, "counterfactual=1.0 needs an env"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "r", "--set", "bogus=1"],
     2, "valid train keys"),
    (["train", "--env", "darkroom", "--data", "{root}/nodata", "--out", "r"], 2,
     "no such dataset directory"),
    (["train", "--env", "darkroom", "--data", "{train_only}", "--out", "r", *SETS], 2,
     "has no test task"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "r"], 2,
     "shorter than a training sequence"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "{run}", *SETS], 2,
     "already holds a run; pass --resume"),
    (["train", "--env", "darkroom", "--data", "{other_data}", "--out", "{run}", "--resume",
      *SETS], 2, "was trained on --data"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "{run}", "--resume",
      *[a if a != "steps=2" else "steps=3" for a in SETS]], 2, "train.steps: saved 2"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "{run}", "--resume", *SETS],
     0, "already finished (checkpoint at step 2 of 2)"),
    (["train", "--env", "darkroom", "--data", "{data}", "--out", "{corrupt}", "--resume",
      *SETS], 1, "checkpoints/1: checkpoint unreadable"),
    (["train", "--env", "darkroom", "--data", "{bad_header}", "--out", "r", *SETS], 1,
     "obs.npy"),
    # dicp experiment
    (["experiment", "no_such_experiment"], 2, "no experiment 'no_such_experiment'"),
    (["experiment", "{bad_exp}"], 2, "valid keys"),
    (["experiment", "{k2d_exp}"], 2, "reward_memory"),
    (["experiment", "darkroom", "--splits", "0,x"], 2, "--splits"),
    # the CLI itself
    (["--cpu-devices", "0", "eval"], 2, "positive integer"),
]


@pytest.mark.parametrize("argv, code, words", CASES)
def test_every_mistake_is_one_line_with_its_exit_code(world, tmp_path, monkeypatch, capsys,
                                                      argv, code, words):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**world) for a in argv]
    if words is None:  # an accepted value: it must not be refused at the config stage
        argv += ["--dry-run"]
    before = _tree(world["root"], tmp_path)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == (0 if words is None else code), (out, err)
    assert "Traceback" not in out + err
    if words is None:
        return
    text = out if code == 0 else err
    lines = [line for line in text.splitlines() if line.startswith("dicp ")] or text.splitlines()
    assert len(lines) == 1 and words in lines[0], text
    assert _tree(world["root"], tmp_path) == before  # nothing left behind


def test_batch_size_is_checked_against_the_devices_before_the_run_is_recorded(world,
                                                                               tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    sets = [a if a != "batch_size=2" else "batch_size=3" for a in SETS]
    proc = subprocess.run(
        [sys.executable, "-m", "dicp_jax.cli", "train", "--env", "darkroom", "--data",
         str(world["data"]), "--out", str(tmp_path / "run"), "--cpu-devices", "2", *sets],
        env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "dicp train: batch_size=3 must be divisible by the 2 devices (set batch_size, or "
        "--cpu-devices on CPU)")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_interrupted_collection_says_what_was_kept(tmp_path, monkeypatch, capsys):
    import dicp_jax.collect

    def interrupted(env_name, out, *a, **k):  # one chunk of two tasks stored, then Ctrl-C
        shard = Path(out) / "shards" / "00000"
        shard.mkdir(parents=True)
        (shard / "shard.json").write_text(json.dumps({"task_index": [3, 5]}))
        raise KeyboardInterrupt

    monkeypatch.setattr(dicp_jax.collect, "collect_dataset", interrupted)
    rc = main(["collect", "--env", "darkroom", "--tasks", "4", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.strip() == (f"dicp collect: interrupted: 2 of 4 tasks kept in {tmp_path / 'd'}, "
                           "rerun the same command with --resume")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import dicp_jax.commands.list as list_command

    monkeypatch.setattr(list_command, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["list"])


def test_discoverability(world, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "dicp 0." in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for words in ("darkroom: 81 tasks (73 train / 8 test", "experiments:", "  darkroom: ",
                  "methods:", "  ad: ", "planners:", "  policy: ", "  beam: ", "presets:"):
        assert words in out
    assert main(["eval", "--run", str(world["run"]), "--planner", "beam", "--set",
                 "reward_memory=true", "--tasks", "3", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["eval"]["reward_memory"] is True and cfg["eval"]["plan"]["depth"] == 8
    assert len(cfg["task_index"]) == 3
    assert main(["train", "--env", "darkroom", "--data", str(world["data"]), "--out", "x",
                 "--dry-run", *SETS]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["n_transit"] == 8 and cfg["train"]["true_context"] is True
    assert main(["experiment", "darkroom", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    lookups = "DICP + look-ups (beyond the paper)"
    assert cfg["eval"][lookups]["reward_memory"] is True and list(cfg["train"]) == ["0"]
    assert [r["label"] for r in cfg["rows"]] == ["DICP (paper's planner)", lookups, "AD"]


def test_noop_settings_warn(world, capsys):
    assert main(["eval", "--run", str(world["run"]), "--episodes", "1", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "the planner never plans and DICP equals AD" not in err  # 20 steps > n_transit 8
    assert main(["eval", "--run", str(world["run"]), "--episodes", "1", "--set",
                 "plan_start=20", "--dry-run"]) == 0
    assert "the planner never plans and DICP equals AD" in capsys.readouterr().err


def test_a_tiny_collection_has_train_and_test_tasks():
    import dicp_envs
    from dicp_jax.commands.collect import select_tasks

    train, test = (set(dicp_envs.split_indices("darkroom", s).tolist()) for s in
                   ("train", "test"))
    for n in (2, 4, 10, 80):
        label, idx = select_tasks("darkroom", "all", n)
        picked = set(idx.tolist())
        assert label == "subset" and len(picked) == n
        assert picked & train and picked & test
    assert select_tasks("darkroom", "all", 81)[0] == "all"
    label, idx = select_tasks("darkroom", "train", 4)
    assert label == "train" and idx.tolist() == dicp_envs.split_indices("darkroom",
                                                                        "train")[:4].tolist()


def test_eval_reports_the_planned_share_and_its_multiply_adds(world, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(world["run"]), "--episodes", "1", "--tasks", "2",
                 "--depth", "2", "--beam-size", "2", "--set", "plan_start=0", "--set",
                 "plan_confidence=1.0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "the planner acted on 100% of real steps" in text
    assert "multiply-adds per action:" in text and "on a searched step" in text
    assert json.loads(out.read_text())["planned"] == [[20], [20]]
