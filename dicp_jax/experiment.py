"""``make train``: collect -> train -> meta-test every row -> table + plot.

An experiment is a JSON file in ``experiments/`` naming the env, the training preset,
overrides for each stage's config, and the rows of its results table. A row is data: a
label, a method, a planner and its eval settings (``EvalConfig`` / ``PlanConfig``
overrides), and whether it follows the paper, so a new comparison is a new row, not new
code. The source learner (PPO) is always a row too, read off the dataset. Every override
is checked against its stage's dataclass before any work.

Each stage reuses a valid artefact (dataset, final checkpoint, each row's meta-test)
unless ``force``; splits are train/test split seeds, one model per split, histories
shared. Progress and messages go to a ``reporting.Reporter`` (the CLI passes the console).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicp_jax import config as cfglib
from dicp_jax import distributed
from dicp_jax.reporting import Event, Reporter, silent

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SOURCE_LABEL = "PPO"  # the row of the source learner's own episodes, always reported
SUCCESS = "#success"  # suffix of a row's per-episode success, where the env reports it
PLANNED = "#planned"  # suffix of a row's steps per episode the planner acted on


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the results table: the split's checkpoint of ``method`` (trained with the
    experiment's train overrides plus the row's ``train``) meta-tested with ``planner``
    under ``settings`` (EvalConfig / PlanConfig overrides). Rows with the same method and
    train settings share one checkpoint (e.g. AD and DICP of the same model). ``paper`` says
    the row's method and planner settings are the paper's; ``notes`` say what else the
    table's reader needs (e.g. an experiment-specific setting)."""

    label: str
    planner: str
    method: str = "ad"
    paper: bool = False
    settings: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)  # TrainConfig overrides of the row
    notes: str = ""

    def __hash__(self) -> int:  # dict field: hash by label (rows are compared by value)
        return hash(self.label)

    @property
    def checkpoint(self) -> str:
        """The name of the row's checkpoint within a split: rows naming the same one share
        it. The experiment's own (AD, no row overrides) keeps the plain split directory."""
        if self.method == "ad" and not self.train:
            return ""
        tag = json.dumps(self.train, sort_keys=True)
        return self.method + (f"-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
                              if self.train else "")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    env: str
    preset: str = "cpu"
    collect: dict = dataclasses.field(default_factory=dict)  # source (PPO) config overrides
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig overrides
    codec: dict = dataclasses.field(default_factory=dict)  # the env codec's option overrides
    train: dict = dataclasses.field(default_factory=dict)  # TrainConfig overrides
    rows: tuple[Row, ...] = ()  # meta-tested rows of the table, in order
    splits: tuple[int, ...] | None = None  # split seeds (None: the env's registered seed)
    tasks: int | None = None  # collect a seeded random subset of this many tasks (None: all)
    test_tasks: int | None = None  # meta-test the first N of a split's test tasks (None: all)
    eval_seed: int = 0
    reference: dict = dataclasses.field(default_factory=dict)  # figures read off the paper
    # Another experiment whose dataset this one reads (same env and collection settings), so
    # extra rows need no second collection; None: its own.
    dataset: str | None = None

    def __hash__(self) -> int:  # dict fields: hash by name (configs are compared by value)
        return hash(self.name)


def parse_rows(rows: Any) -> tuple[Row, ...]:
    """The ``rows`` list of an experiment file as ``Row`` records; refuses a missing or
    mistyped field, an unknown method or planner, and a label used twice (or the source's)."""
    from dicp_jax import methods
    from dicp_jax.stages import PLANNERS

    if not isinstance(rows, list) or not rows:
        raise cfglib.ConfigError(f"rows must be a non-empty list of row objects, got {rows!r}")
    fields = {f.name for f in dataclasses.fields(Row)}
    out = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise cfglib.ConfigError(f"{where} must be an object, got {row!r}")
        unknown = sorted(set(row) - fields)
        if unknown:
            raise cfglib.ConfigError(f"{where}: unknown key(s) {unknown}; valid: "
                                     f"{sorted(fields)}")
        for key in ("label", "planner"):
            if key not in row:
                raise cfglib.ConfigError(f"{where}: missing key {key!r}")
        where = f"row {row['label']!r}"
        checks = (("label", str, "a name"), ("planner", str, "a planner name"),
                  ("method", str, "a method name"), ("paper", bool, "true or false"),
                  ("settings", dict, "an object of eval/plan overrides"),
                  ("train", dict, "an object of TrainConfig overrides"),
                  ("notes", str, "a string"))
        for key, typ, what in checks:
            if key in row and not isinstance(row[key], typ):
                raise cfglib.ConfigError(f"{where}: {key} must be {what}, got {row[key]!r}")
        if not row["label"].strip():
            raise cfglib.ConfigError(f"{where}: label must not be empty")
        if row["planner"] not in PLANNERS:
            raise cfglib.ConfigError(f"{where}: unknown planner {row['planner']!r}; valid: "
                                     f"{', '.join(PLANNERS)}")
        if row.get("method", "ad") not in methods.names():
            raise cfglib.ConfigError(f"{where}: unknown method {row['method']!r}; valid: "
                                     f"{', '.join(methods.names())}")
        if "planner" in row.get("settings", {}):
            raise cfglib.ConfigError(f"{where}: set the row's planner, not settings.planner")
        out.append(Row(**row))
    labels = [r.label for r in out]
    twice = sorted({x for x in labels if labels.count(x) > 1} | ({SOURCE_LABEL} & set(labels)))
    if twice:
        raise cfglib.ConfigError(f"row label(s) {twice} used twice (the source learner's row "
                                 f"is {SOURCE_LABEL!r}): each row needs its own label")
    return tuple(out)


def load_experiment(name_or_path: str) -> Experiment:
    """Read and check an experiment file: every key, every row, every stage override
    (against the stage's config) and the task counts, so a mistake is refused before any
    work starts."""
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
        hint = (" (the dicp/ad slots are rows now: \"rows\": [{\"label\": ..., \"planner\": "
                "\"beam\", \"settings\": {...}}, ...])" if {"dicp", "ad"} & set(unknown) else "")
        raise cfglib.ConfigError(f"{path}: unknown key(s) {unknown}; valid: "
                                 f"{sorted(valid)}{hint}")
    for k in ("env", "rows"):
        if k not in data:
            what = ("one of the envs of `dicp list`" if k == "env"
                    else "the meta-tested rows of the table")
            raise cfglib.ConfigError(f"{path}: missing key {k!r} ({what})")
    for k, f in fields.items():  # override sections are objects; a list or number is a typo
        if k in data and f.type in (dict, "dict") and not isinstance(data[k], dict):
            raise cfglib.ConfigError(f"{path}: {k} must be an object of overrides, got "
                                     f"{data[k]!r}")
    if data.get("dataset") is not None:
        other = EXPERIMENTS / f"{data['dataset']}.json"
        if not isinstance(data["dataset"], str) or not other.exists():
            known = sorted(p.stem for p in EXPERIMENTS.glob("*.json"))
            raise cfglib.ConfigError(f"{path}: dataset names the experiment whose dataset "
                                     f"to read; got {data['dataset']!r}, known: {known}")
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
    try:
        data["rows"] = parse_rows(data["rows"])
    except cfglib.ConfigError as e:
        raise cfglib.ConfigError(f"{path}: {e}") from None
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
    6561 tasks fit a CPU run. Each split's train / test tasks are those of the subset. A
    family whose tasks are drawn (its own ``splits``, e.g. ML1-style 50 train + 50 test)
    collects exactly its splits' tasks."""
    import dicp_envs

    family = dicp_envs.family(exp.env)
    if exp.tasks is None and family.splits is not None:
        seeds = exp.splits or (family.split_seed,)
        return np.unique(np.concatenate([dicp_envs.split_indices(exp.env, side, seed=s)
                                         for s in seeds for side in ("train", "test")]))
    n = len(dicp_envs.make(exp.env)[0].task_list())
    if exp.tasks is None:
        return np.arange(n)
    if exp.tasks > n:
        raise cfglib.ConfigError(f"experiment {exp.name}: tasks={exp.tasks} but {exp.env} "
                                 f"has {n} tasks")
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, exp.tasks, replace=False))


def stage_configs(exp: Experiment, splits_seed: int | None = None) -> dict[str, Any]:
    """The typed config of every stage, built from the experiment's overrides by the same
    builder as the CLI's (``dicp_jax.stages``), so both accept the same keys: ``ppo``,
    ``model``, ``codec``, ``train``, and ``eval`` (each row's EvalConfig, by label)."""
    from dicp_jax import stages

    def section(name: str, build, *a) -> Any:  # name the section an error comes from
        try:
            return build(*a)
        except cfglib.ConfigError as e:
            raise type(e)(f"{name}: {e}") from None

    stages.check_env_name(exp.env)
    ppo = section("collect", stages.ppo_config, exp.env, exp.collect)
    train, model, codec = section("train/model/codec", stages.train_configs, exp.env,
                                  exp.preset, exp.train, exp.model, exp.codec)
    if splits_seed is not None:
        train = dataclasses.replace(train, split_seed=splits_seed)
    trains = {}  # each row checkpoint's TrainConfig, by ``Row.checkpoint``
    for row in exp.rows:
        overrides = {"method": row.method, **row.train}
        cfg = section(f"row {row.label!r} train",
                      lambda o=overrides: cfglib.replace(train, **o))
        section(f"row {row.label!r} train", _check_method, cfg, model)
        trains[row.checkpoint] = cfg
    evals = {row.label: section(f"row {row.label!r}", stages.eval_config, exp.env,
                                row.settings, row.planner) for row in exp.rows}
    return dict(ppo=ppo, model=model, codec=codec, train=train, trains=trains, eval=evals)


def _check_method(train: Any, model: Any) -> None:
    from dicp_jax import methods

    train.validate()
    methods.get(train.method).check_config(train, model)


def row_key(row: Row, eval_cfg: Any, eval_seed: int) -> str:
    """What a row's meta-test returns are a function of, besides the checkpoint and the
    tasks: its method, its full EvalConfig and the seed. Not its label, so renaming a row
    reuses its results."""
    return json.dumps({"method": row.method, "eval": cfglib.to_dict(eval_cfg),
                       "eval_seed": eval_seed}, sort_keys=True)


def _dataset_ok(env_name: str, data_dir: Path, ppo: Any, tasks: np.ndarray,
                report: Reporter = silent) -> bool:
    """A complete, uncorrupted dataset of exactly these tasks of this env, collected with
    these PPO settings; ``report`` hears why not."""
    from dicp_jax.history import DatasetError, load_history

    say = lambda text: report(Event("message", text, {"data_dir": str(data_dir)}))
    if not (data_dir / "metadata.json").exists():
        return False
    try:
        _, meta = load_history(data_dir, env_name=env_name, streams=[0], steps=1)
    except DatasetError as e:
        say(f"dataset {data_dir} is not usable ({e}); collecting again")
        return False
    from dicp_jax.collect import DEFAULT_BLOCK

    if meta.raw.get("tasks_per_block") != DEFAULT_BLOCK:
        say(f"dataset {data_dir} was collected with other task grouping "
            f"(tasks_per_block {meta.raw.get('tasks_per_block')}); collecting again")
        return False
    differ = cfglib.diff_dicts(meta.source_config, cfglib.to_dict(ppo))
    if differ:
        say(f"dataset {data_dir} was collected with other PPO settings {differ}; "
            "collecting again")
        return False
    if sorted(int(i) for i in meta.task_index) != [int(i) for i in tasks]:
        say(f"dataset {data_dir} holds {len(meta.task_index)} tasks, not the experiment's "
            f"{len(tasks)}; collecting again")
        return False
    return True


def _trained_ok(run_dir: Path, env_name: str, cfgs: Mapping[str, Any],
                report: Reporter = silent) -> bool:
    """A finished run under these configs. A run trained under other settings (an edited
    experiment, or a changed default) is moved to ``<run>.stale`` so it is trained again."""
    import shutil

    from dicp_jax.checkpoint import ConfigMismatch, check_compatible, manager, read_config

    distributed.barrier("dicp-experiment-check-run")  # no process moves what another reads
    if not (run_dir / "config.json").exists():
        return False
    saved = read_config(run_dir)
    try:
        check_compatible(saved, env_name, cfgs["model"], cfgs["train"], run_dir, cfgs["codec"])
    except ConfigMismatch as e:
        stale = run_dir.with_name(run_dir.name + ".stale")
        distributed.barrier("dicp-experiment-checked-run")  # all read it before it moves
        if distributed.is_main():
            shutil.rmtree(stale, ignore_errors=True)
            run_dir.rename(stale)
        distributed.barrier("dicp-experiment-moved-run")
        report(Event("message", f"{e}\nmoved it to {stale}; training again",
                     {"run_dir": str(run_dir), "stale": str(stale)}))
        return False
    latest = manager(run_dir, saved["train"]["keep_checkpoints"]).latest_step()
    return latest is not None and latest >= cfgs["train"].steps


def _stage(report: Reporter, n: int, text: str, **data: Any) -> None:
    report(Event("stage", f"[{n}/3] {text}", {"stage": n, "of": 3, **data}))


def run_experiment(exp: Experiment, splits: tuple[int, ...] | None = None, force: bool = False,
                   out_root: Path | None = None, report: Reporter = silent) -> Path:
    """Run (or reuse) every stage; returns the results directory. Stages, progress bars,
    each row's meta-test summary and the final table go to ``report``."""
    import shutil

    import dicp_envs
    from dicp_jax.collect import collect_dataset
    from dicp_jax.train import train

    out = (out_root or EXPERIMENTS / "results") / exp.name
    data_dir = (out.parent / exp.dataset if exp.dataset else out) / "data"
    splits = splits or exp.splits or (dicp_envs.family(exp.env).split_seed,)
    env, _ = dicp_envs.make(exp.env)

    cfgs = stage_configs(exp)
    tasks = experiment_tasks(exp)
    if force or not _dataset_ok(exp.env, data_dir, cfgs["ppo"], tasks, report):
        if force and data_dir.exists() and distributed.is_main():
            shutil.rmtree(data_dir)
        distributed.barrier("dicp-experiment-data-removed")
        drawn = exp.tasks is None and dicp_envs.family(exp.env).splits is not None
        everything = exp.tasks is None and not drawn
        which = ("every" if everything else f"the {len(tasks)} train and test" if drawn
                 else f"a random subset of {len(tasks)}")
        _stage(report, 1, f"collecting PPO histories on {which} {exp.env} task(s) -> "
               f"{data_dir}", data_dir=str(data_dir))
        # No metadata yet: an interrupted collection, resumed chunk by chunk. Otherwise the
        # finished dataset is unusable and is replaced.
        partial = not (data_dir / "metadata.json").exists()
        collect_dataset(exp.env, data_dir, cfgs["ppo"], split="all",
                        task_index=None if everything else tasks, resume=partial,
                        overwrite=not partial, report=report)
        runs = out / "runs"
        old_runs = runs.exists()
        distributed.barrier("dicp-experiment-runs-seen")  # every process has looked
        if old_runs:  # trained on the histories just replaced
            if distributed.is_main():
                shutil.rmtree(out / "runs.stale", ignore_errors=True)
                runs.rename(out / "runs.stale")
            distributed.barrier("dicp-experiment-runs-moved")
            report(Event("message", "moved the models trained on the old dataset to "
                         f"{out / 'runs.stale'}"))
    else:
        _stage(report, 1, f"reusing the dataset in {data_dir}", data_dir=str(data_dir))

    per_split = []
    for seed in splits:
        split_cfgs = stage_configs(exp, splits_seed=seed)
        results: dict[str, np.ndarray] = {}
        for name, train_cfg in split_cfgs["trains"].items():
            cfgs = {**split_cfgs, "train": train_cfg}
            run_dir = out / "runs" / (f"split{seed}" + (f"-{name}" if name else ""))
            what = f"split {seed}" + (f", {name}" if name else "")
            if force and run_dir.exists() and distributed.is_main():
                shutil.rmtree(run_dir)
            distributed.barrier("dicp-experiment-run-removed")
            if _trained_ok(run_dir, exp.env, cfgs, report):
                _stage(report, 2, f"{what}: reusing the trained model in {run_dir}",
                       split=seed, run_dir=str(run_dir))
            else:
                _stage(report, 2, f"{what}: training {train_cfg.method} ({exp.preset} preset)"
                       f" -> {run_dir}", split=seed, run_dir=str(run_dir))
                train(exp.env, data_dir, run_dir, train_cfg, cfgs["model"],
                      resume=(run_dir / "config.json").exists(), report=report,
                      codec_cfg=cfgs["codec"])
            rows = tuple(r for r in exp.rows if r.checkpoint == name)
            results.update(_evaluate_split(exp, cfgs, seed, run_dir, data_dir, env, force,
                                           report, rows))
        per_split.append(results)
    return _report(exp, out, per_split, env, splits, split_cfgs, report)


def _optimal_returns(env: Any, task_index: np.ndarray) -> np.ndarray | None:
    """The optimal return of each task, where the env declares that oracle (else None)."""
    if not env.has_oracle:
        return None
    tasks = np.asarray(env.task_list())[task_index]
    return np.asarray(env.optimal_return(env.params_for(tasks)))


def _cached_rows(cache: Path, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Row returns already stored for exactly these test tasks, by ``row_key`` (none from
    a file of other tasks or of an older format)."""
    if not cache.exists():
        return {}
    saved = np.load(cache)
    if "keys" not in saved.files or not np.array_equal(saved["task_index"], idx):
        return {}
    keys = json.loads(str(saved["keys"]))
    return {key: saved[name] for name, key in keys.items() if name in saved.files}


def _evaluate_split(exp: Experiment, cfgs: Mapping[str, Any], seed: int, run_dir: Path,
                    data_dir: Path, env: Any, force: bool, report: Reporter,
                    rows: tuple[Row, ...]) -> dict[str, np.ndarray]:
    """The returns of ``rows`` (all of ``run_dir``'s checkpoint) on the split's test tasks
    (reusing rows already meta-tested with the same key in ``meta_test.npz``), plus the
    source PPO's own curve."""
    import time

    import dicp_envs
    from dicp_jax.evaluate import evaluate_run
    from dicp_jax.history import load_history
    from dicp_jax.train import load_trained

    cache = run_dir / "meta_test.npz"
    in_experiment = set(experiment_tasks(exp).tolist())
    idx = np.asarray([i for i in dicp_envs.split_indices(exp.env, "test", seed=seed)
                      if int(i) in in_experiment][:exp.test_tasks], np.int64)
    stored = {} if force else _cached_rows(cache, idx)
    keys = {row.label: row_key(row, cfgs["eval"][row.label], exp.eval_seed) for row in rows}
    reused = [label for label, key in keys.items() if key in stored]
    if reused:
        _stage(report, 3, f"split {seed}: reusing the meta-test results of "
               f"{', '.join(reused)} in {cache}", split=seed, rows=reused)
    optimal = _optimal_returns(env, idx)
    results: dict[str, np.ndarray] = {"task_index": idx}
    if optimal is not None:
        results["optimal"] = optimal
    trained = None
    for row in rows:
        key = keys[row.label]
        if key not in stored:
            cfg = cfgs["eval"][row.label]
            if trained is None:
                trained = load_trained(run_dir)
            t0 = time.perf_counter()
            out = evaluate_run(trained, idx, cfg, exp.eval_seed)
            stored[key] = np.asarray(out.returns)
            if out.success is not None:  # envs reporting success (stored beside returns)
                stored[key + SUCCESS] = np.asarray(out.success)
            if out.planned is not None:  # the one-jit rollout counts them
                stored[key + PLANNED] = np.asarray(out.planned)
            secs = time.perf_counter() - t0
            last = stored[key][:, -10:].mean(1)
            frac = None if optimal is None else float((last / optimal).mean())
            shown = (f"{frac:.0%} of optimal" if frac is not None
                     else f"mean return {last.mean():.2f}")
            report(Event("metrics", f"[3/3] split {seed}: {row.label} meta-test on {len(idx)} "
                         f"test tasks x {cfg.episodes} episodes in {secs:.1f} s (last 10 "
                         f"episodes: {shown})",
                         {"split": seed, "row": row.label, "seconds": secs,
                          "last10_return": float(last.mean()), "last10_fraction": frac}))
        results[row.label] = stored[key]
        for suffix in (SUCCESS, PLANNED):
            if key + suffix in stored:
                results[row.label + suffix] = stored[key + suffix]
    _, meta = load_history(data_dir, env_name=exp.env, task_index=idx, streams=[0], steps=1)
    results[SOURCE_LABEL] = np.asarray(meta.episode_returns, np.float64)
    names = {f"row_{hashlib.sha1(k.encode()).hexdigest()[:16]}": k for k in keys.values()}
    names |= {f"{name}_{suffix[1:]}": k + suffix for name, k in names.items()
              for suffix in (SUCCESS, PLANNED) if k + suffix in stored}
    if distributed.is_main():  # process 0 alone writes shared files
        np.savez(cache, keys=json.dumps(names, sort_keys=True), task_index=idx,
                 **{name: stored[k] for name, k in names.items()})
    return results


PLANNER_NOTES = {
    "beam": "beam search with the in-context world model",
    "policy": "the same checkpoint sampling from its policy head",
}


def result_notes(exp: Experiment, n_tasks: int, splits: Sequence[int], with_optimal: bool,
                 n_streams: int) -> list[str]:
    """The table's notes: what was pooled, what each row is with its settings, which rows
    follow the paper, and the paper's figures."""
    subset = "" if exp.tasks is None else f" of a random subset of {exp.tasks} tasks"
    frac = "; (fraction of the optimal return)" if with_optimal else ""
    notes = [f"{n_tasks} test tasks pooled over {len(splits)} split(s) (split seeds "
             f"{', '.join(map(str, splits))}){subset}; mean ± standard error over tasks{frac}."]
    for row in exp.rows:
        settings = ", ".join(f"{k}={v}" for k, v in sorted({**row.train,
                                                              **row.settings}.items()))
        what = PLANNER_NOTES.get(row.planner, f"planner {row.planner}")
        notes.append(f"{row.label}, {'follows the paper' if row.paper else 'beyond the paper'}"
                     f": {what} (method {row.method})"
                     + (f"; settings: {settings}" if settings else "")
                     + (f"; {row.notes}" if row.notes else "") + ".")
    notes.append(f"{SOURCE_LABEL}: the source learner's own episodes on the test tasks (mean "
                 f"over its {n_streams} streams).")
    paper = [r.label for r in exp.rows if r.paper]
    beyond = [r.label for r in exp.rows if not r.paper]
    notes.append("Rows whose method and planner follow the paper: "
                 + (", ".join(paper) or "none") + "; beyond the paper: "
                 + (", ".join(beyond) or "none") + ".")
    for method, points in exp.reference.items():
        pts = ", ".join(f"episode {k}: {v}" for k, v in points.items())
        notes.append(f"Paper figure (read off, mean of 5 splits), {method}: {pts}.")
    return notes


def cost_notes(exp: Experiment, cfgs: Mapping[str, Any], env: Any,
               planned_share: Mapping[str, float] | None = None) -> list[str]:
    """Multiply-adds per action of each row, counted as the meta-test executes them
    (``dicp_jax.flops``, the unit of the paper's Table 7), where a cost model covers the
    row's method and planner (discrete actions; the policy head or the beam search). With
    a row's measured share of steps the search ran on (``planned_share``), its mean per
    action beside the cost of a searched step; without it, a search at every step."""
    from dicp_jax import codecs
    from dicp_jax.flops import macs_per_action

    n_actions = getattr(codecs.for_env(env).action, "n", None)  # None: continuous actions
    costs = []
    for row in exp.rows:
        plan = getattr(cfgs["eval"][row.label], "plan", None)
        if n_actions is None or row.planner not in ("policy", "beam") or (
                row.planner == "beam" and plan is None):
            continue
        try:
            macs = macs_per_action(row.method, cfgs["model"], int(n_actions),
                                   plan if row.planner == "beam" else None)
        except ValueError:  # no cost model for this method
            continue
        share = (planned_share or {}).get(row.label)
        if row.planner == "beam" and share is not None:
            mean = macs_per_action(row.method, cfgs["model"], int(n_actions), plan, share)
            costs.append(f"{row.label} {_si(mean)} (searched on {share:.0%} of steps, "
                         f"{_si(macs)} per searched step)")
        else:
            costs.append(f"{row.label} {_si(macs)}")
    return ([f"Multiply-adds per action, as executed (dicp_jax.flops): {'; '.join(costs)}."]
            if costs else [])


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _report(exp: Experiment, out: Path, per_split: list[dict], env: Any,
            splits: tuple[int, ...], cfgs: Mapping[str, Any], report: Reporter) -> Path:
    from dicp_jax.results import markdown, plot, summarise, write_csv

    labels = [row.label for row in exp.rows] + [SOURCE_LABEL]
    pooled = {m: np.concatenate([r[m] for r in per_split]) for m in labels}
    with_optimal = all("optimal" in r for r in per_split)
    optimal = (np.concatenate([r["optimal"] for r in per_split]) if with_optimal else None)
    n_tasks = sum(len(r["task_index"]) for r in per_split)
    success = {m: np.concatenate([r[m + SUCCESS] for r in per_split]) for m in labels
               if all(m + SUCCESS in r for r in per_split)}
    rows = summarise(pooled, optimal, success or None)
    planned_share = {m: float(np.mean([r[m + PLANNED].mean() for r in per_split])) / env.horizon
                     for m in labels if all(m + PLANNED in r for r in per_split)}
    if not distributed.is_main():  # process 0 alone writes and shows the results
        return out
    write_csv(rows, out / "results.csv")
    notes = result_notes(exp, n_tasks, splits, with_optimal, cfgs["ppo"].n_streams)
    notes += cost_notes(exp, cfgs, env, planned_share)
    title = f"{exp.name}: meta-test return on held-out tasks"
    (out / "results.md").write_text(markdown(rows, title, notes))
    plot(pooled, optimal, out / "returns.png", title, env.horizon,
         reference={k: {int(e): float(v) for e, v in pts.items()}
                    for k, pts in exp.reference.items()})
    report(Event("message", (out / "results.md").read_text(), {"results": str(out)}))
    report(Event("message", f"wrote {out / 'results.md'}, {out / 'results.csv'}, "
                 f"{out / 'returns.png'}"))
    return out


__all__ = ["EXPERIMENTS", "SOURCE_LABEL", "Experiment", "Row", "cost_notes", "experiment_tasks",
           "load_experiment", "parse_rows", "result_notes", "row_key", "run_experiment",
           "stage_configs"]
