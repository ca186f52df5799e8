"""``dicp train``: train the AD/DICP Transformer on a history dataset.

    dicp train --env darkroom --data DIR --out RUN_DIR [--preset cpu|paper]
               [--dynamics-strength X] [--split-seed N] [--set key=value ...] [--resume]

``--set`` keys go to the train config or the model config (their names do not overlap);
every key and value is checked, with the valid ones listed, before any work starts.
"""

from __future__ import annotations

import argparse
import sys

PRESET_NAMES = ("cpu", "paper")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment name, e.g. darkroom")
    parser.add_argument("--data", required=True, help="history dataset directory")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="cpu",
                        help="train schedule: cpu (~10 min on 2 cores) or paper (accelerators)")
    parser.add_argument("--dynamics-strength", type=float, default=None,
                        help="lambda of the dynamics losses (0 = plain AD; default 1)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed of the train/test task split (default: the env's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train or model config field (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_configs(env: str, preset: str, sets: list[str], dynamics_strength=None,
                  split_seed=None):
    """(train_cfg, model_cfg) from a preset plus overrides; raises ConfigError early."""
    import dicp_envs
    from dicp_jax import config as cfglib
    from dicp_jax.train import TrainConfig, preset_configs

    if env not in dicp_envs.names():
        raise cfglib.ConfigError(f"unknown env {env!r}; valid: {', '.join(dicp_envs.names())}")
    train_cfg, model_cfg = preset_configs(env, preset)
    overrides = cfglib.parse_sets(sets)
    if dynamics_strength is not None:
        overrides["dynamics_strength"] = dynamics_strength
    if split_seed is not None:
        overrides["split_seed"] = split_seed
    train_keys = set(cfglib.field_names(TrainConfig))
    model_keys = set(cfglib.field_names(type(model_cfg)))
    unknown = sorted(set(overrides) - train_keys - model_keys)
    if unknown:
        raise cfglib.ConfigError(
            f"unknown key(s) {unknown}; valid train keys: {', '.join(sorted(train_keys))}; "
            f"valid model keys: {', '.join(sorted(model_keys))}")
    train_cfg = cfglib.replace(train_cfg, **{k: v for k, v in overrides.items()
                                             if k in train_keys})
    model_cfg = cfglib.replace(model_cfg, **{k: v for k, v in overrides.items()
                                             if k in model_keys})
    return train_cfg, model_cfg


def run(args: argparse.Namespace) -> int:
    from dicp_jax.config import ConfigError

    try:
        train_cfg, model_cfg = build_configs(args.env, args.preset, args.set,
                                             args.dynamics_strength, args.split_seed)
    except ConfigError as e:
        print(f"dicp train: {e}", file=sys.stderr)
        return 2
    from dicp_jax.train import train

    try:
        val = train(args.env, args.data, args.out, train_cfg, model_cfg, resume=args.resume,
                    progress=not args.no_progress)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"dicp train: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in val.items() if not isinstance(v, dict)}
    print("final validation:", ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0
