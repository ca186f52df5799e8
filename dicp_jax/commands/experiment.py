"""``dicp experiment NAME``: the whole pipeline of ``experiments/NAME.json`` (``make train``)."""

from __future__ import annotations

import argparse

from dicp_jax.commands.common import UsageError, print_config, warn


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="darkroom",
                   help="experiments/<name>.json, or a path to an experiment file "
                        "(see `dicp list experiments`)")
    p.add_argument("--splits", default="",
                   help="comma-separated split seeds, e.g. 0,1,2,3,4 (default: the env's)")
    p.add_argument("--force", action="store_true",
                   help="redo every stage instead of reusing valid results")
    p.add_argument("--out-root", default=None, help="default: experiments/results")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (messages and results are still shown)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every stage's resolved config as JSON and exit")


def parse_splits(text: str) -> tuple[int, ...] | None:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--splits {text!r}: expected comma-separated integer split seeds, "
                         "e.g. 0,1,2") from None
    return seeds or None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import dicp_envs
    from dicp_jax import stages
    from dicp_jax.distributed import is_main
    from dicp_jax.experiment import (
        experiment_tasks,
        load_experiment,
        run_experiment,
        stage_configs,
    )
    from dicp_jax.reporting import console, silent

    splits = parse_splits(args.splits)
    exp = load_experiment(args.name)
    env, _ = dicp_envs.make(exp.env)
    seeds = splits or exp.splits or (dicp_envs.family(exp.env).split_seed,)
    cfgs = stage_configs(exp)
    messages = [m for cfg in cfgs["trains"].values() for m in stages.train_warnings(cfg)]
    for label, cfg in cfgs["eval"].items():
        messages += [f"row {label!r}: {m}"
                     for m in stages.eval_warnings(cfg, env.horizon, cfgs["model"].n_transit)]
    for message in messages:
        warn("experiment", message)
    if args.dry_run:
        return print_config("experiment", {
            "name": exp.name, "env": exp.env, "preset": exp.preset, "splits": list(seeds),
            "n_tasks": len(experiment_tasks(exp)), "test_tasks": exp.test_tasks,
            "eval_seed": exp.eval_seed,
            "rows": [{k: getattr(r, k) for k in ("label", "method", "planner", "paper",
                                                 "checkpoint")} for r in exp.rows],
            **{k: v for k, v in cfgs.items() if k not in ("train", "trains")},
            "train": {str(s): {name or "ad": cfg for name, cfg in
                               stage_configs(exp, splits_seed=s)["trains"].items()}
                      for s in seeds}})
    try:
        run_experiment(exp, splits=splits, force=args.force,
                       out_root=Path(args.out_root) if args.out_root else None,
                       report=(console(progress=not args.no_progress) if is_main()
                               else silent))  # process 0 alone shows a multi-process run
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted: finished stages and stored chunks are kept; "
                                "rerun the same command to continue") from None
    return 0
