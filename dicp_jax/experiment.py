"""``make train``: collect -> train -> meta-test (DICP and AD) -> table + plot.

An experiment is a JSON file in ``experiments/`` naming the env, the training preset, and
overrides for each stage's config (checked against the stage's dataclass before any work).
Each stage reuses a valid artefact (dataset, final checkpoint, evaluation) unless
``force``; splits are train/test split seeds, one model per split, histories shared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from dicp_jax import config as cfglib

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    env: str
    preset: str = "cpu"
    collect: dict = dataclasses.field(default_factory=dict)  # PPOConfig overrides
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig overrides
    train: dict = dataclasses.field(default_factory=dict)  # TrainConfig overrides
    dicp: dict = dataclasses.field(default_factory=dict)  # EvalConfig/PlanConfig overrides
    ad: dict = dataclasses.field(default_factory=dict)  # EvalConfig overrides (policy mode)
    splits: tuple[int, ...] | None = None  # split seeds (None: the env's registered seed)
    tasks: int | None = None  # collect a seeded random subset of this many tasks (None: all)
    test_tasks: int | None = None  # meta-test the first N of a split's test tasks (None: all)
    eval_seed: int = 0
    reference: dict = dataclasses.field(default_factory=dict)  # figures read off the paper

    def __hash__(self) -> int:  # dict fields: hash by name (configs are compared by value)
        return hash(self.name)


def load_experiment(name_or_path: str) -> Experiment:
    """Read and check an experiment file: every key, every stage override (against the
    stage's config) and the task counts, so a mistake is refused before any work starts."""
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENTS / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in EXPERIMENTS.glob("*.json"))
        raise FileNotFoundError(f"no experiment {name_or_path!r} ({path}); known: {known}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise cfglib.ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise cfglib.ConfigError(f"{path}: an experiment is a JSON object, got "
                                 f"{type(data).__name__}")
    data.pop("description", None)
    fields = {f.name: f for f in dataclasses.fields(Experiment)}
    valid = set(fields) - {"name"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise cfglib.ConfigError(f"{path}: unknown key(s) {unknown}; valid: {sorted(valid)}")
    if "env" not in data:
        raise cfglib.ConfigError(f"{path}: missing key 'env' (one of the envs of `dicp list`)")
    for k, f in fields.items():  # override sections are objects; a list or number is a typo
        if k in data and f.type in (dict, "dict") and not isinstance(data[k], dict):
            raise cfglib.ConfigError(f"{path}: {k} must be an object of overrides, got "
                                     f"{data[k]!r}")
    for k in ("env", "preset"):
        if k in data and not isinstance(data[k], str):
            raise cfglib.ConfigError(f"{path}: {k} must be a name, got {data[k]!r}")
    if "splits" in data and data["splits"] is not None:
        seeds = data["splits"]
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise cfglib.ConfigError(f"{path}: splits must be a list of integer split seeds "
                                     f"or null, got {seeds!r}")
        data["splits"] = tuple(seeds)
    if not isinstance(data.get("eval_seed", 0), int):
        raise cfglib.ConfigError(f"{path}: eval_seed must be an integer, got "
                                 f"{data['eval_seed']!r}")
    exp = Experiment(name=path.stem, **data)
    for k in ("tasks", "test_tasks"):
        v = getattr(exp, k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise cfglib.ConfigError(f"{path}: {k} must be a positive integer or null, got {v!r}")
    try:
        stage_configs(exp)  # validate every override before any work starts
    except cfglib.ConfigError as e:
        raise cfglib.ConfigError(f"{path}: {e}") from None
    experiment_tasks(exp)
    return exp


SUBSET_SEED = 0  # the random subset of tasks is fixed: every split and rerun shares it


def experiment_tasks(exp: Experiment) -> np.ndarray:
    """Sorted indices (into ``env.task_list()``) of the tasks an experiment collects and
    splits: all of them, or a seeded random subset of ``exp.tasks`` so that Key-to-Door's
    6561 tasks fit a CPU run. Each split's train / test tasks are those of the subset."""
    import dicp_envs

    n = len(dicp_envs.make(exp.env)[0].task_list())
    if exp.tasks is None:
        return np.arange(n)
    if exp.tasks > n:
        raise cfglib.ConfigError(f"experiment {exp.name}: tasks={exp.tasks} but {exp.env} "
                                 f"has {n} tasks")
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, exp.tasks, replace=False))


def stage_configs(exp: Experiment, splits_seed: int | None = None) -> dict[str, Any]:
    """The typed config of every stage, built from the experiment's overrides by the same
    builder as the CLI's (``dicp_jax.stages``), so both accept the same keys."""
    from dicp_jax import stages

    def section(name: str, build, *a) -> Any:  # name the section an error comes from
        try:
            return build(*a)
        except cfglib.ConfigError as e:
            raise type(e)(f"{name}: {e}") from None

    stages.check_env_name(exp.env)
    ppo = section("collect", stages.ppo_config, exp.env, exp.collect)
    train, model = section("train/model", stages.train_configs, exp.env, exp.preset,
                           exp.train, exp.model)
    if splits_seed is not None:
        train = dataclasses.replace(train, split_seed=splits_seed)
    dicp = section("dicp", stages.eval_config, exp.env, exp.dicp, "beam")
    ad = section("ad", stages.eval_config, exp.env, exp.ad, "policy")
    return dict(ppo=ppo, model=model, train=train, dicp=dicp, ad=ad)


def _dataset_ok(env_name: str, data_dir: Path, ppo: Any, tasks: np.ndarray) -> bool:
    """A complete, uncorrupted dataset of exactly these tasks of this env, collected with
    these PPO settings."""
    from dicp_jax.history import DatasetError, load_history

    if not (data_dir / "metadata.json").exists():
        return False
    try:
        _, meta = load_history(data_dir, env_name=env_name, streams=[0], steps=1)
    except DatasetError as e:
        print(f"dataset {data_dir} is not usable ({e}); collecting again")
        return False
    from dicp_jax.collect import DEFAULT_BLOCK

    if meta.raw.get("tasks_per_block") != DEFAULT_BLOCK:
        print(f"dataset {data_dir} was collected with other task grouping "
              f"(tasks_per_block {meta.raw.get('tasks_per_block')}); collecting again")
        return False
    differ = cfglib.diff_dicts(meta.ppo, cfglib.to_dict(ppo))
    if differ:
        print(f"dataset {data_dir} was collected with other PPO settings {differ}; "
              "collecting again")
        return False
    if sorted(int(i) for i in meta.task_index) != [int(i) for i in tasks]:
        print(f"dataset {data_dir} holds {len(meta.task_index)} tasks, not the experiment's "
              f"{len(tasks)}; collecting again")
        return False
    return True


def _trained_ok(run_dir: Path, env_name: str, model_cfg: Any, train_cfg: Any) -> bool:
    """A finished run under these configs. A run trained under other settings (an edited
    experiment, or a changed default) is moved to ``<run>.stale`` so it is trained again."""
    import shutil

    from dicp_jax.checkpoint import ConfigMismatch, check_compatible, manager, read_config

    if not (run_dir / "config.json").exists():
        return False
    saved = read_config(run_dir)
    try:
        check_compatible(saved, env_name, model_cfg, train_cfg, run_dir)
    except ConfigMismatch as e:
        stale = run_dir.with_name(run_dir.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        run_dir.rename(stale)
        print(f"{e}\nmoved it to {stale}; training again")
        return False
    latest = manager(run_dir, saved["train"]["keep_checkpoints"]).latest_step()
    return latest is not None and latest >= train_cfg.steps


def run_experiment(exp: Experiment, splits: tuple[int, ...] | None = None, force: bool = False,
                   out_root: Path | None = None, progress: bool = True) -> Path:
    """Run (or reuse) every stage; returns the results directory."""
    import shutil

    import dicp_envs
    from dicp_jax.collect import collect_dataset
    from dicp_jax.evaluate import evaluate_run
    from dicp_jax.history import load_history
    from dicp_jax.train import load_trained, train

    out = (out_root or EXPERIMENTS / "results") / exp.name
    data_dir = out / "data"
    splits = splits or exp.splits or (dicp_envs.spec(exp.env).split_seed,)
    env, _ = dicp_envs.make(exp.env)
    all_tasks = np.asarray(env.task_list())

    cfgs = stage_configs(exp)
    tasks = experiment_tasks(exp)
    if force or not _dataset_ok(exp.env, data_dir, cfgs["ppo"], tasks):
        if force and data_dir.exists():
            shutil.rmtree(data_dir)
        which = "every" if exp.tasks is None else f"a random subset of {len(tasks)}"
        print(f"[1/3] collecting PPO histories on {which} {exp.env} task(s) -> {data_dir}")
        # No metadata yet: an interrupted collection, resumed chunk by chunk. Otherwise the
        # finished dataset is unusable and is replaced.
        partial = not (data_dir / "metadata.json").exists()
        collect_dataset(exp.env, data_dir, cfgs["ppo"], split="all",
                        task_index=None if exp.tasks is None else tasks, resume=partial,
                        overwrite=not partial, progress=progress)
        runs = out / "runs"
        if runs.exists():  # trained on the histories just replaced
            shutil.rmtree(out / "runs.stale", ignore_errors=True)
            runs.rename(out / "runs.stale")
            print(f"moved the models trained on the old dataset to {out / 'runs.stale'}")
    else:
        print(f"[1/3] reusing the dataset in {data_dir}")

    per_split = []
    for seed in splits:
        cfgs = stage_configs(exp, splits_seed=seed)
        run_dir = out / "runs" / f"split{seed}"
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
        if _trained_ok(run_dir, exp.env, cfgs["model"], cfgs["train"]):
            print(f"[2/3] split {seed}: reusing the trained model in {run_dir}")
        else:
            print(f"[2/3] split {seed}: training ({exp.preset} preset) -> {run_dir}")
            train(exp.env, data_dir, run_dir, cfgs["train"], cfgs["model"],
                  resume=(run_dir / "config.json").exists(), progress=progress)
        per_split.append(_evaluate_split(exp, cfgs, seed, run_dir, data_dir, env, all_tasks,
                                         force, evaluate_run, load_trained, load_history))
    return _report(exp, out, per_split, env, splits)


def _evaluate_split(exp, cfgs, seed, run_dir, data_dir, env, all_tasks, force, evaluate_run,
                    load_trained, load_history) -> dict[str, np.ndarray]:
    """DICP and AD returns on the split's test tasks, plus the source PPO's own curve."""
    import time

    import dicp_envs

    cache = run_dir / "meta_test.npz"
    key = json.dumps({**{k: cfglib.to_dict(cfgs[k]) for k in ("dicp", "ad")},
                      "test_tasks": exp.test_tasks}, sort_keys=True)
    if cache.exists() and not force:
        saved = np.load(cache)
        if str(saved["config"]) == key:
            print(f"[3/3] split {seed}: reusing the meta-test results in {cache}")
            return {k: saved[k] for k in saved.files if k != "config"}
    in_experiment = set(experiment_tasks(exp).tolist())
    idx = np.asarray([i for i in dicp_envs.split_indices(exp.env, "test", seed=seed)
                      if int(i) in in_experiment][:exp.test_tasks], np.int64)
    trained = load_trained(run_dir)
    results = {"task_index": idx,
               "optimal": np.asarray(env.optimal_return(env.params_for(all_tasks[idx])))}
    for label, name in (("DICP", "dicp"), ("AD", "ad")):
        t0 = time.perf_counter()
        results[label] = np.asarray(evaluate_run(trained, idx, cfgs[name], exp.eval_seed).returns)
        frac = (results[label][:, -10:].mean(1) / results["optimal"]).mean()
        print(f"[3/3] split {seed}: {label} meta-test on {len(idx)} test tasks x "
              f"{cfgs[name].episodes} episodes in {time.perf_counter() - t0:.1f} s "
              f"(last 10 episodes: {frac:.0%} of optimal)")
    _, meta = load_history(data_dir, env_name=exp.env, task_index=idx, streams=[0], steps=1)
    results["PPO"] = np.asarray(meta.episode_returns, np.float64)
    np.savez(cache, config=key, **results)
    return results


def _report(exp: Experiment, out: Path, per_split: list[dict], env: Any,
            splits: tuple[int, ...]) -> Path:
    from dicp_jax.results import markdown, plot, summarise, write_csv

    methods = ("DICP", "AD", "PPO")
    pooled = {m: np.concatenate([r[m] for r in per_split]) for m in methods}
    optimal = np.concatenate([r["optimal"] for r in per_split])
    rows = summarise(pooled, optimal)
    write_csv(rows, out / "results.csv")
    subset = "" if exp.tasks is None else f" of a random subset of {exp.tasks} tasks"
    notes = [f"{len(optimal)} test tasks pooled over {len(splits)} split(s) "
             f"(split seeds {', '.join(map(str, splits))}){subset}; mean ± standard error "
             "over tasks; (fraction of the optimal return).",
             "DICP: beam search with the in-context world model; AD: the same checkpoint "
             "sampling from its policy head; PPO: the source learner's own episodes on the "
             "test tasks (mean over its 100 streams)."]
    for method, over in (("DICP", exp.dicp), ("AD", exp.ad)):
        if over:
            notes.append(f"{method} settings: "
                         + ", ".join(f"{k}={v}" for k, v in sorted(over.items())) + ".")
    for method, points in exp.reference.items():
        pts = ", ".join(f"episode {k}: {v}" for k, v in points.items())
        notes.append(f"Paper figure (read off, mean of 5 splits), {method}: {pts}.")
    title = f"{exp.name}: meta-test return on held-out tasks"
    (out / "results.md").write_text(markdown(rows, title, notes))
    plot(pooled, optimal, out / "returns.png", title, env.horizon,
         reference={k: {int(e): float(v) for e, v in pts.items()}
                    for k, pts in exp.reference.items()})
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'returns.png'}")
    return out
