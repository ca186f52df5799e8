"""``dicp collect``: PPO learning histories on many tasks, stored as a dataset.

    dicp collect --env darkroom [--split train|test|all] [--tasks N] [--out DIR]
                 [--set key=value ...] [--chunk-size N] [--memory-budget GiB] [--resume]
                 [--dry-run]

Defaults are the env's paper PPO settings (``sources.ppo.paper_config``); ``--set`` overrides any
``PPOConfig`` field. Every option is checked before any work starts or anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicp_jax.commands.common import UsageError, positive, print_config

LOW_SOURCE_RETURN = 0.5  # the cpu preset's min_source_return: such train tasks are left out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment name (see `dicp list envs`)")
    parser.add_argument("--split", choices=("train", "test", "all"), default="all")
    parser.add_argument("--tasks", type=int, default=None, metavar="N",
                        help="only N tasks: the first N of a train or test split; with "
                             "--split all, N split between the train and test tasks of the "
                             "env's registered split in proportion (at least one test task "
                             "when N >= 2), so a small dataset can be trained and meta-tested")
    parser.add_argument("--out", default=None, help="dataset directory (default data/ENV)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PPOConfig field, e.g. n_epochs=10 (repeatable)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="tasks per jitted call (default: from --memory-budget, and at "
                             "most a quarter of the run)")
    parser.add_argument("--memory-budget", type=float, default=2.0,
                        help="GiB of device memory per chunk, used to size chunks")
    parser.add_argument("--block", type=int, default=None, metavar="N",
                        help="tasks vmapped together per device (default: "
                             "collect.DEFAULT_BLOCK, sized for CPUs; raise it on "
                             "accelerators). Part of what a history is a function of, "
                             "recorded with the dataset")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings as JSON and exit")


def select_tasks(env_name: str, split: str, n: int | None) -> tuple[str, np.ndarray]:
    """(split label, task indices) to collect: the split, its first ``n`` tasks, or with
    ``split == "all"`` the first tasks of each side of the registered train/test split in
    proportion. Why: the first ``n`` of "all" were train tasks only, and training then
    stopped for want of test tasks."""
    import dicp_envs

    idx = dicp_envs.split_indices(env_name, split)
    if n is None or n == len(idx):
        return split, idx
    if n > len(idx):
        raise UsageError(f"--tasks {n}: the {split} split of {env_name} has only {len(idx)} "
                         "tasks")
    if split != "all":
        return split, idx[:n]
    train, test = (dicp_envs.split_indices(env_name, s) for s in ("train", "test"))
    n_test = 0 if n < 2 else min(len(test), max(1, round(n * len(test) / len(idx))))
    n_test = max(n_test, n - len(train))
    return "subset", np.sort(np.concatenate([train[:n - n_test], test[:n_test]]))


def stored_tasks(out: Path) -> int:
    """Tasks already stored as finished shards (a partial run's progress)."""
    shards = out / "shards"
    if not shards.is_dir():
        return 0
    n = 0
    for f in shards.glob("*/shard.json"):
        if not f.parent.name.startswith("."):
            try:
                n += len(json.loads(f.read_text())["task_index"])
            except (OSError, ValueError, KeyError):
                continue
    return n


def check_out(out: Path, env_name: str, ppo: dict, idx: np.ndarray, resume: bool,
              overwrite: bool) -> None:
    """Refuse an output directory the writer would refuse (or, with --overwrite, delete
    although it is not a dataset), before any work starts."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    run_file = out / "run.json"
    is_dataset = run_file.exists() or (out / "metadata.json").exists()
    if not is_dataset:
        what = "refusing to --overwrite" if overwrite else "--out"
        raise UsageError(f"{what} {out}: the directory is not empty and is not a dataset")
    if overwrite:
        return
    if not resume:
        raise UsageError(f"{out} already holds a dataset; pass --resume to continue it or "
                         "--overwrite to replace it")
    if not run_file.exists():
        return  # the writer reports a finished dataset without its run record
    from dicp_jax.config import diff_dicts

    old = json.loads(run_file.read_text())
    differ = {**({"env_name": (old.get("env_name"), env_name)}
                 if old.get("env_name") != env_name else {}),
              **{f"ppo.{k}": v for k, v in diff_dicts(old.get("source_config", {}), ppo).items()}}
    if [int(i) for i in old.get("task_index", [])] != [int(i) for i in idx]:
        differ["tasks"] = (f"{len(old.get('task_index', []))} tasks",
                           f"{len(idx)} tasks (or other ones)")
    if differ:
        shown = [f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items()]
        more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
        raise UsageError(f"cannot resume {out}: it was started with other settings ("
                         + "; ".join(shown[:3]) + more + "); rerun with those or --overwrite")


def source_report(env_name: str, out: Path) -> str:
    """How well the source learners did: last-5-episode return as a fraction of optimal."""
    import dicp_envs
    from dicp_jax.history import load_history
    from dicp_jax.train import source_quality

    _, meta = load_history(out, env_name=env_name, streams=[0], steps=1, verify=False)
    frac = np.asarray(list(source_quality(env_name, meta).values()))
    if not dicp_envs.make(env_name)[0].has_oracle:
        return (f"source learners, last 5 episodes: mean return {frac.mean():.2f} "
                f"(min {frac.min():.2f}, max {frac.max():.2f})")
    low = int((frac < LOW_SOURCE_RETURN).sum())
    return (f"source PPO learners, last 5 episodes: {frac.mean():.0%} of optimal on average "
            f"(min {frac.min():.0%}); {low} of {len(frac)} tasks below "
            f"{LOW_SOURCE_RETURN:.0%} (left out of training by the cpu preset)")


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of the run, checked; raises before anything is written."""
    from dicp_jax import config as cfglib
    from dicp_jax import stages

    positive("--tasks", args.tasks)
    positive("--chunk-size", args.chunk_size)
    positive("--memory-budget", args.memory_budget)
    positive("--block", args.block)
    ppo = stages.ppo_config(args.env, cfglib.parse_sets(args.set))
    split, idx = select_tasks(args.env, args.split, args.tasks)
    out = Path(args.out or f"data/{args.env}")
    check_out(out, args.env, cfglib.to_dict(ppo), idx, args.resume, args.overwrite)
    return {"env": args.env, "split": split, "n_tasks": len(idx), "out": out, "ppo": ppo,
            "task_index": idx}


def block(args: argparse.Namespace) -> int:
    from dicp_jax.collect import DEFAULT_BLOCK

    return DEFAULT_BLOCK if args.block is None else args.block


def run(args: argparse.Namespace) -> int:
    r = resolve(args)
    idx, out = r["task_index"], r["out"]
    if args.dry_run:
        import jax

        import dicp_envs
        from dicp_jax.collect import chunk_size_for
        from dicp_jax.distributed import process_share

        env, _ = dicp_envs.make(args.env)
        mine = len(process_share(idx))  # this process's tasks, on its own devices
        chunk = chunk_size_for(env, r["ppo"], mine, jax.local_device_count(),
                               args.memory_budget * 2**30, args.chunk_size, block(args))
        shown = {k: v for k, v in r.items() if k != "task_index"}
        if r["split"] == "subset":
            shown["task_index"] = [int(i) for i in idx]
        return print_config("collect", {**shown, "chunk_size": chunk,
                                        "chunks": math.ceil(mine / chunk)})
    from dicp_jax.collect import collect_dataset
    from dicp_jax.distributed import is_main
    from dicp_jax.reporting import console

    main = is_main()  # the other processes of a multi-process run stay quiet
    say = print if main else (lambda *a, **k: None)

    subset = r["split"] == "subset"
    sides = " (from both sides of its registered train/test split)" if subset else ""
    say(f"collecting {len(idx)} tasks of {args.env}{sides} into {out}: compiling the PPO "
        "learners (one time), then running them", flush=True)
    stats: dict = {}
    t0 = time.perf_counter()
    try:
        meta = collect_dataset(args.env, out, r["ppo"], split=r["split"] if not subset else "all",
                               task_index=idx if subset else None,
                               n_tasks=None if subset else args.tasks,
                               resume=args.resume, overwrite=args.overwrite,
                               report=console(progress=main and not args.no_progress),
                               chunk_size=args.chunk_size,
                               memory_budget=args.memory_budget * 2**30, stats=stats,
                               block=block(args))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: {stored_tasks(out)} of {len(idx)} tasks kept in "
                                f"{out}, rerun the same command with --resume") from None
    wall = time.perf_counter() - t0
    n = len(meta["task_index"])
    extra = ""
    if stats:
        extra = (f"; compile {stats['compile_s']:.1f}s, run {stats['run_s']:.1f}s "
                 f"({stats['env_steps'] / max(stats['run_s'], 1e-9):,.0f} env steps/s)")
    say(f"wrote {n} tasks of {args.env} to {out} in {wall:.1f}s{extra}")
    if main:
        say(source_report(args.env, out))
    sys.stdout.flush()
    return 0
