"""``dicp train``: train the AD/DICP Transformer on a history dataset.

    dicp train --env darkroom --data DIR --out RUN_DIR [--preset cpu|paper]
               [--dynamics-strength X] [--split-seed N] [--set key=value ...] [--resume]
               [--dry-run]

``--set`` keys go to the train config or the model config (their names do not overlap).
Every key, value, the dataset, the run directory and the device count are checked before
anything is written, so a refused start leaves nothing that blocks the corrected rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicp_jax.commands.common import (
    UsageError,
    checkpoint_steps,
    load_run,
    print_config,
    read_run,
    warn,
)

PRESET_NAMES = ("cpu", "paper")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment name (see `dicp list envs`)")
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
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (validation lines are still shown)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved configs as JSON and exit")


def build_configs(env: str, preset: str, sets: list[str], dynamics_strength=None,
                  split_seed=None) -> Any:
    """``stages.TrainStage`` (train, model, codec configs) from a preset plus ``--set``
    overrides; raises ConfigError."""
    from dicp_jax import config as cfglib
    from dicp_jax import stages

    stages.check_env_name(env)
    overrides: dict[str, Any] = cfglib.parse_sets(sets)
    if dynamics_strength is not None:
        overrides["dynamics_strength"] = dynamics_strength
    if split_seed is not None:
        overrides["split_seed"] = split_seed
    return stages.train_configs(env, preset, **stages.split_train_model(env, overrides))


def check_dataset(env: str, data: Path, train_cfg: Any, model_cfg: Any) -> None:
    """The dataset exists, is of this env, has train and test tasks under the split (after
    leaving out weak source learners) and streams long enough for a training sequence.
    Reads the metadata and one step of one stream only."""
    import dicp_envs
    from dicp_jax.history import load_history, read_meta
    from dicp_jax.train import source_quality

    if not data.is_dir():
        raise UsageError(f"--data {data}: no such dataset directory")
    meta = read_meta(data)
    if meta.get("env_name") != env:
        raise UsageError(f"--data {data} holds {meta.get('env_name')!r} histories, "
                         f"not {env!r}")
    steps = meta["shapes"]["action"][1]  # [streams, steps(, action_dim)]
    seq = train_cfg.sequence_length(model_cfg)
    if steps < seq:
        raise UsageError(f"--data {data}: streams of {steps} steps are shorter than a training "
                         f"sequence ({seq} transitions: seq_windows x n_transit)")
    _, hmeta = load_history(data, env_name=env, streams=[0], steps=1, verify=False)
    quality = source_quality(env, hmeta)
    sides = {s: [int(i) for i in dicp_envs.split_indices(env, s, seed=train_cfg.split_seed)
                 if int(i) in quality] for s in ("train", "test")}
    kept = [i for i in sides["train"] if quality[i] >= train_cfg.min_source_return]
    if not sides["test"] or not sides["train"]:
        side = "test" if not sides["test"] else "train"
        which = ("registered split" if train_cfg.split_seed is None
                 else f"split of seed {train_cfg.split_seed}")
        raise UsageError(f"--data {data} has no {side} task of {env}'s {which}; collect "
                         f"some, e.g. `dicp collect --env {env} --split all --tasks N` takes "
                         "tasks from both sides")
    if not kept:
        raise UsageError(f"min_source_return={train_cfg.min_source_return} leaves out every "
                         f"train task of {data}: their source learners all ended below it")


def check_run(out: Path, data: Path, env: str, train_cfg: Any, model_cfg: Any,
              codec_cfg: Any, resume: bool) -> str | None:
    """Refuse a run directory the run cannot (or must not) use. Returns a message instead
    of training when a resumed run is already finished."""
    from dicp_jax import checkpoint as ckpt

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if not (out / "config.json").exists():
        if out.is_dir() and any(out.iterdir()):
            raise UsageError(f"--out {out}: the directory is not empty and holds no run")
        return None
    if not resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose "
                         "another --out")
    saved = read_run(out)
    recorded = str(saved.get("data_dir", ""))
    if recorded and Path(recorded).resolve() != data.resolve() and recorded != str(data):
        raise UsageError(f"{out} was trained on --data {recorded}, not {data}; resume it with "
                         f"--data {recorded} or train a new run")
    ckpt.check_compatible(saved, env, model_cfg, train_cfg, out, codec_cfg)
    steps = checkpoint_steps(out)
    if steps and steps[-1] >= train_cfg.steps:
        return (f"{out} is already finished (checkpoint at step {steps[-1]} of "
                f"{train_cfg.steps}); nothing to resume. Meta-test it: dicp eval --run {out}")
    if steps:
        load_run(out)  # a corrupted checkpoint: one line now, not a traceback after loading
    return None


def run(args: argparse.Namespace) -> int:
    import jax

    from dicp_jax.stages import train_warnings

    train_cfg, model_cfg, codec_cfg = build_configs(args.env, args.preset, args.set,
                                                    args.dynamics_strength, args.split_seed)
    for message in train_warnings(train_cfg):
        warn("train", message)
    data, out = Path(args.data), Path(args.out)
    check_dataset(args.env, data, train_cfg, model_cfg)
    n_dev = jax.device_count()
    if train_cfg.batch_size % n_dev:
        raise UsageError(f"batch_size={train_cfg.batch_size} must be divisible by the {n_dev} "
                         "devices (set batch_size, or --cpu-devices on CPU)")
    finished = check_run(out, data, args.env, train_cfg, model_cfg, codec_cfg, args.resume)
    if args.dry_run:
        return print_config("train", {"env": args.env, "data": data, "out": out,
                                      "devices": n_dev, "train": train_cfg, "model": model_cfg,
                                      "codec": codec_cfg})
    if finished:
        print(finished)
        return 0
    from dicp_jax.distributed import is_main
    from dicp_jax.reporting import console, silent
    from dicp_jax.train import train

    main = is_main()  # in a multi-process run the other processes stay quiet
    print_ = print if main else (lambda *a, **k: None)
    print_(f"training {args.env} ({args.preset} preset, {train_cfg.steps} steps) into {out}: "
           "loading the dataset and compiling the train step (one time) ...", flush=True)
    try:
        val = train(args.env, data, out, train_cfg, model_cfg, codec_cfg=codec_cfg,
                    resume=args.resume,
                    report=console(progress=not args.no_progress) if main else silent)
    except KeyboardInterrupt:
        steps = checkpoint_steps(out)
        kept = f"its checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"
        raise KeyboardInterrupt(f"interrupted: {out} keeps {kept} of {train_cfg.steps}, "
                                "rerun the same command with --resume") from None
    summary = {k: v for k, v in val.items() if not isinstance(v, dict)}
    if summary:
        print_("final validation:", ", ".join(
             f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    print_(f"wrote the run to {out} (config.json, checkpoints/, metrics.jsonl, metrics.png); "
           f"meta-test it: dicp eval --run {out}")
    return 0
