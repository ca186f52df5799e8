"""``dicp collect``: PPO learning histories on many tasks, stored as a dataset.

    dicp collect --env darkroom [--split train|test|all] [--tasks N] [--out DIR]
                 [--set key=value ...] [--chunk-size N] [--memory-budget GiB] [--resume]

Defaults are the env's paper PPO settings (``paper_ppo_config``); ``--set`` overrides any
``PPOConfig`` field (checked, with the valid keys listed, before any work starts).
"""

from __future__ import annotations

import argparse
import sys
import time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment name, e.g. darkroom")
    parser.add_argument("--split", choices=("train", "test", "all"), default="all")
    parser.add_argument("--tasks", type=int, default=None, help="only the first N split tasks")
    parser.add_argument("--out", default=None, help="dataset directory (default data/ENV)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PPOConfig field, e.g. n_epochs=10 (repeatable)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="tasks per jitted call (default: from --memory-budget)")
    parser.add_argument("--memory-budget", type=float, default=2.0,
                        help="GiB of device memory per chunk, used to size chunks")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import dicp_envs
    from dicp_jax import config as cfglib
    from dicp_jax.history import DatasetError
    from dicp_jax.ppo import paper_ppo_config

    try:
        dicp_envs.spec(args.env)
        cfg = cfglib.replace(paper_ppo_config(args.env), **cfglib.parse_sets(args.set))
    except ValueError as e:
        print(f"dicp collect: {e}", file=sys.stderr)
        return 2
    from dicp_jax.collect import collect_dataset

    out = args.out or f"data/{args.env}"
    stats: dict = {}
    t0 = time.perf_counter()
    try:
        meta = collect_dataset(args.env, out, cfg, split=args.split, n_tasks=args.tasks,
                               resume=args.resume, overwrite=args.overwrite,
                               progress=not args.no_progress, chunk_size=args.chunk_size,
                               memory_budget=args.memory_budget * 2**30, stats=stats)
    except DatasetError as e:
        print(f"dicp collect: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    n = len(meta["task_index"])
    extra = ""
    if stats:
        extra = (f"; compile {stats['compile_s']:.1f}s, run {stats['run_s']:.1f}s "
                 f"({stats['env_steps'] / max(stats['run_s'], 1e-9):,.0f} env steps/s)")
    print(f"wrote {n} tasks of {args.env} to {out} in {wall:.1f}s{extra}")
    return 0
