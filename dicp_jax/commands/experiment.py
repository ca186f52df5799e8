"""``dicp experiment NAME``: the whole pipeline of ``experiments/NAME.json`` (``make train``)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="darkroom",
                   help="experiments/<name>.json, or a path to an experiment file")
    p.add_argument("--splits", default="",
                   help="comma-separated split seeds, e.g. 0,1,2,3,4 (default: the env's)")
    p.add_argument("--force", action="store_true",
                   help="redo every stage instead of reusing valid results")
    p.add_argument("--out-root", default=None, help="default: experiments/results")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dicp_jax.experiment import load_experiment, run_experiment

    exp = load_experiment(args.name)
    splits = tuple(int(s) for s in args.splits.split(",") if s.strip()) or None
    run_experiment(exp, splits=splits, force=args.force,
                   out_root=Path(args.out_root) if args.out_root else None,
                   progress=not args.no_progress)
    return 0
