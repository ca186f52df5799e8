"""`make train`'s pipeline: config validation, tables/plots, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicp_jax.config import ConfigError, to_dict
from dicp_jax.experiment import Row, load_experiment, run_experiment, stage_configs
from dicp_jax.reporting import Recorder
from dicp_jax.results import markdown, plot, summarise, write_csv

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _write(tmp_path, **data):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"env": "darkroom", "rows": _rows(), **data}))
    return str(path)


def _rows(dicp=None, ad=None):
    """A DICP (beam) row and an AD (policy) row with these settings."""
    return [{"label": "DICP", "paper": True, "planner": "beam", "settings": dicp or {}},
            {"label": "AD", "paper": True, "planner": "policy", "settings": ad or {}}]


def test_shipped_experiments_load_and_build_their_stage_configs():
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.json"))
    assert {"darkroom", "darkroom_paper", "dark_key_to_door", "darkroom_permuted"} <= set(names)
    for name in names:
        exp = load_experiment(name)
        assert exp.env.replace("/", "_").removesuffix("-v3") in name  # metaworld/reach-v3
        cfgs = stage_configs(exp)  # every override names a real field with a valid value
        assert list(cfgs["eval"]) == [r.label for r in exp.rows]


def test_darkroom_rows_are_todays_dicp_and_ad_slots():
    """The default experiment shows the paper's planner alone, the planner with the
    look-ups, and AD of the same checkpoint; the look-up row is the former DICP slot and the
    paper's-planner row the same minus the look-ups, so their EvalConfigs are the ones the
    fixed slots built."""
    from dicp_jax import stages

    exp = load_experiment("darkroom")
    evals = stage_configs(exp)["eval"]
    paper, lookups, ad = exp.rows
    assert (paper.planner, lookups.planner, ad.planner) == ("beam", "beam", "policy")
    assert paper.paper and ad.paper and not lookups.paper
    assert "plan_start=0" in paper.notes
    slot = {"episodes": 50, "beam_size": 10, "depth": 8, "plan_start": 0,
            "before_reward": "explore", "reward_memory": True}
    assert evals[lookups.label] == stages.eval_config("darkroom", slot, "beam")
    alone = {k: v for k, v in slot.items() if k not in ("before_reward", "reward_memory")}
    assert evals[paper.label] == stages.eval_config("darkroom", alone, "beam")
    assert evals[ad.label] == stages.eval_config("darkroom", {"episodes": 50}, "policy")


def test_reward_memory_on_key_to_door_fails_before_any_work(tmp_path):
    path = tmp_path / "k2d.json"
    path.write_text(json.dumps({"env": "dark_key_to_door",
                                "rows": _rows(dicp={"reward_memory": True})}))
    with pytest.raises(ConfigError, match="reward_memory"):
        stage_configs(load_experiment(str(path)))


@pytest.mark.parametrize("data, match", [
    ({"bogus": 1}, "unknown key"),
    ({"dicp": {"depth": 8}}, "slots are rows now"),
    ({"train": {"stepz": 3}}, "valid keys"),
    ({"rows": _rows(dicp={"beam_size": "ten"})}, "beam_size"),
    ({"rows": _rows(dicp={"plan_start": -1})}, "plan_start"),
    ({"rows": []}, "non-empty list"),
    ({"rows": [{"label": "DICP"}]}, "missing key 'planner'"),
    ({"rows": [{"label": "DICP", "planner": "greedy"}]}, "unknown planner"),
    ({"rows": [{"label": "DICP", "planner": "beam", "method": "bc"}]}, "unknown method"),
    ({"rows": [{"label": "DPT", "planner": "policy", "method": "dpt"}]}, "one window per"),
    ({"rows": [{"label": "DICP", "planner": "beam", "paper": "yes"}]}, "true or false"),
    ({"rows": [{"label": "DICP", "planner": "beam", "beam_size": 3}]}, "unknown key"),
    ({"rows": [{"label": "X", "planner": "beam", "settings": {"planner": "policy"}}]},
     "not settings.planner"),
    ({"rows": _rows()[:1] * 2}, "used twice"),
    ({"rows": [{"label": "PPO", "planner": "policy"}]}, "used twice"),
    ({"preset": "gpu"}, "unknown preset"),
    ({"tasks": 0}, "positive integer"),
    ({"test_tasks": "8"}, "positive integer"),
    ({"tasks": 82}, "has 81 tasks"),
])
def test_bad_experiment_files_fail_before_any_work(tmp_path, data, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        load_experiment(_write(tmp_path, **data))


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="darkroom"):
        load_experiment("no_such_experiment")


def test_table_and_plot(tmp_path):
    returns = {"DICP": np.array([[0, 10, 20], [0, 5, 10.0]]), "AD": np.zeros((2, 3))}
    optimal = np.array([20.0, 10.0])
    rows = summarise(returns, optimal)
    row = next(r for r in rows if r["method"] == "DICP" and r["column"] == "ep 1-3")
    assert row["last_episode"] == 3 and row["n_tasks"] == 2
    assert row["mean_return"] == pytest.approx((10 + 5) / 2)
    assert row["mean_fraction"] == pytest.approx(0.5)
    md = markdown(rows, "t", ["a note"])
    assert "| DICP |" in md and "(50%)" in md and "- a note" in md
    # A method with more episodes adds columns; bands stay before points, in episode order.
    longer = markdown(summarise({**returns, "PPO": np.ones((2, 12))}, optimal), "t")
    header = longer.splitlines()[2]
    assert header == "| method | ep 1-5 | ep 6-10 | ep 11-12 | ep 1 | ep 10 |"
    plot(returns, optimal, tmp_path / "p.png", "t", 20, reference={"paper": {1: 3.0}})
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_table_without_an_optimal_return_or_with_success_rates(tmp_path):
    """A family without an oracle still gets its table (no fraction columns); a success
    matrix is reported as a rate instead."""
    returns = {"DICP": np.array([[0, 10, 20], [0, 5, 10.0]]), "AD": np.zeros((2, 3))}
    plain = summarise(returns)
    assert all("mean_fraction" not in r and "mean_success" not in r for r in plain)
    assert "| DICP | 7.50 ± 2.50 |" in markdown(plain, "t")
    success = {"DICP": np.array([[0, 1, 1], [0, 0, 1]], bool)}
    rows = summarise(returns, success=success)
    row = next(r for r in rows if r["method"] == "DICP" and r["column"] == "ep 1-3")
    assert row["mean_success"] == pytest.approx(0.5)
    assert row["cumulative_success"] == pytest.approx(1.0)  # both tasks succeeded by ep 3
    table = markdown(rows, "t")
    assert "(50% success per episode, 100% cumulative)" in table
    assert "| AD | 0.00 ± 0.00 |" in table
    write_csv(rows, tmp_path / "r.csv")
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header == ("method,column,first_episode,last_episode,mean_return,se_return,"
                      "mean_success,se_success,cumulative_success,n_tasks")
    plot(returns, None, tmp_path / "p.png", "t", 20)
    assert (tmp_path / "p.png").stat().st_size > 1000


def _synthetic_dataset(path, ppo, n_streams=2, n_steps=40, idx=None):
    """A small dataset of scripted epsilon-greedy histories on every Darkroom task (or on
    ``idx``), written with the real writer (PPO collection itself is covered by
    test_collect)."""
    import jax

    import dicp_envs
    from dicp_jax.collect import DEFAULT_BLOCK, episode_returns
    from dicp_jax.history import DatasetWriter
    from dicp_jax.testing import synthetic_history

    env, _ = dicp_envs.make("darkroom")
    idx = dicp_envs.split_indices("darkroom", "all") if idx is None else np.asarray(idx)
    hist = synthetic_history("darkroom", idx, n_streams, n_steps, jax.random.PRNGKey(0))
    rets = jax.vmap(episode_returns, (0, 0, None))(hist.reward, hist.done, env.horizon)
    header = dict(env_name="darkroom", env_kwargs={}, split="all", task_index=idx,
                  tasks=np.asarray(env.task_list())[idx], source="ppo", source_config=ppo,
                  seed=0, version="test",
                  tasks_per_block=DEFAULT_BLOCK)
    writer = DatasetWriter(path, header)
    writer.write_chunk(idx, jax.tree.map(np.asarray, hist), np.asarray(rets))
    writer.finalize()


@pytest.mark.xdist_group("pipeline")
def test_tiny_pipeline_runs_then_reuses_everything(tmp_path):
    exp = load_experiment(_write(
        tmp_path,
        model={"n_transit": 8, "width": 16, "n_layers": 1, "n_heads": 2, "mlp": 32},
        train={"steps": 4, "batch_size": 4, "steps_per_call": 2, "eval_every": 4,
               "ckpt_every": 4, "eval_windows": 8, "warmup_steps": 1},
        rows=_rows(dicp={"episodes": 2, "beam_size": 2, "depth": 2, "plan_start": 0},
                   ad={"episodes": 2}),
    ))
    ppo = to_dict(stage_configs(exp)["ppo"])  # as if collected with the experiment's PPO
    _synthetic_dataset(tmp_path / "results" / "exp" / "data", ppo)
    log = Recorder()
    out = run_experiment(exp, out_root=tmp_path / "results", report=log)
    for name in ("results.md", "results.csv", "returns.png"):
        assert (out / name).exists()
    table = (out / "results.md").read_text()
    assert "| DICP |" in table and "| AD |" in table and "| PPO |" in table
    assert "8 test tasks pooled over 1 split" in table
    assert "Rows whose method and planner follow the paper: DICP, AD" in table
    assert "reusing the dataset" in log.text() and "training" in log.text()
    assert log.text().rstrip().endswith("returns.png") and table in log.messages()
    log = Recorder()
    run_experiment(exp, out_root=tmp_path / "results", report=log)
    assert "reusing the dataset" in log.text() and "reusing the trained model" in log.text()
    assert "reusing the meta-test results of DICP, AD" in log.text()
    assert "meta-test on" not in log.text()
    # A new row is meta-tested alone; the rows already evaluated are reused.
    greedy = Row("AD greedy", "policy", paper=False, settings={"episodes": 2, "greedy": True})
    log = Recorder()
    run_experiment(dataclasses.replace(exp, rows=(*exp.rows, greedy)),
                   out_root=tmp_path / "results", report=log)
    assert "reusing the meta-test results of DICP, AD" in log.text()
    assert [m.split(": ")[1].split(" meta-test")[0] for m in log.messages("metrics")
            if "meta-test on" in m] == ["AD greedy"]
    assert "| AD greedy |" in (out / "results.md").read_text()
    # An edited experiment does not reuse a model trained under the old settings.
    exp2 = dataclasses.replace(exp, train={**exp.train, "lr": 5e-3})
    log = Recorder()
    run_experiment(exp2, out_root=tmp_path / "results", report=log)
    assert "train.lr: saved 0.01 vs requested 0.005" in log.text()
    assert "training again" in log.text()
    assert (out / "runs" / "split0.stale" / "config.json").exists()


def test_cli_exposes_one_cpu_device_per_core_unless_told():
    code = ("import sys; from dicp_jax import cli; cli.use_cpu_devices(sys.argv[1:]); "
            "import jax; print(len(jax.devices('cpu')))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *a], env=env, check=True,
                                    capture_output=True, text=True).stdout.strip()
    assert run("collect", "--cpu-devices", "3") == "3"
    assert run("train") == str(len(os.sched_getaffinity(0)))
    bad = subprocess.run([sys.executable, "-c", code, "eval", "--cpu-devices", "0"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "positive integer" in bad.stderr


def test_train_tasks_of_failed_source_learners_are_left_out(tmp_path):
    from dicp_jax.history import load_history
    from dicp_jax.train import load_split, source_quality

    _synthetic_dataset(tmp_path / "d", {})
    _, meta = load_history(tmp_path / "d", env_name="darkroom", steps=1)
    quality = source_quality("darkroom", meta)
    assert len(quality) == 81 and all(0.0 <= q <= 1.0 for q in quality.values())
    cut = float(np.median(list(quality.values())))
    _, _, full = load_split("darkroom", tmp_path / "d", None)
    train_h, test_h, split = load_split("darkroom", tmp_path / "d", None, cut)
    assert split["dropped_train"] and split["train"]
    assert all(quality[i] < cut for i in split["dropped_train"])
    assert all(quality[i] >= cut for i in split["train"])
    assert sorted(split["train"] + split["dropped_train"]) == full["train"]
    assert split["test"] == full["test"]  # held-out tasks are never filtered
    assert train_h.action.shape[0] == len(split["train"])
    # kept for the dynamics heads only: loaded after the others, imitation weight 0
    kept_h, _, kept = load_split("darkroom", tmp_path / "d", None, cut, keep_dropped=True)
    n_train, n_dropped = len(kept["train"]), len(kept["dropped_train"])
    assert kept_h.action.shape[0] == n_train + n_dropped
    assert kept["imitate"] == [1.0] * n_train + [0.0] * n_dropped


@pytest.mark.xdist_group("pipeline")
def test_task_subset_is_collected_split_and_meta_tested(tmp_path):
    """``tasks`` makes an experiment a fixed random subset of the env's tasks (Key-to-Door's
    6561 do not fit a CPU run); ``test_tasks`` caps the meta-tested ones. A dataset of other
    tasks is not reused."""
    from dicp_jax.experiment import _dataset_ok, experiment_tasks

    exp = load_experiment(_write(
        tmp_path, tasks=40, test_tasks=2,
        model={"n_transit": 8, "width": 16, "n_layers": 1, "n_heads": 2, "mlp": 32},
        train={"steps": 2, "batch_size": 2, "steps_per_call": 1, "eval_every": 2,
               "ckpt_every": 2, "eval_windows": 4, "warmup_steps": 1},
        rows=_rows(dicp={"episodes": 1, "beam_size": 2, "depth": 2}, ad={"episodes": 1}),
    ))
    tasks = experiment_tasks(exp)
    assert len(tasks) == 40 and len(set(tasks.tolist())) == 40
    np.testing.assert_array_equal(tasks, experiment_tasks(exp))  # fixed subset
    ppo = to_dict(stage_configs(exp)["ppo"])
    data = tmp_path / "results" / "exp" / "data"
    _synthetic_dataset(data, ppo, idx=tasks)
    log = Recorder()
    assert not _dataset_ok("darkroom", data, stage_configs(exp)["ppo"], np.arange(81), log)
    assert "not the experiment's 81" in log.text()
    out = run_experiment(exp, out_root=tmp_path / "results")
    saved = np.load(out / "runs" / "split0" / "meta_test.npz")
    assert len(saved["task_index"]) == 2 and set(saved["task_index"].tolist()) <= set(
        tasks.tolist())
    config = json.loads((out / "runs" / "split0" / "config.json").read_text())
    assert set(config["split"]["train"]) <= set(tasks.tolist())
    assert "random subset of 40 tasks" in (out / "results.md").read_text()
