"""The run directory: config.json, orbax checkpoints, metrics.jsonl and metrics.png.

``config.json`` records everything needed to rebuild the run (env, model and train configs,
dataset path, split); resuming or loading under a different config fails loudly, naming
each differing field with both values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dicp_jax import config as cfglib


class ConfigMismatch(cfglib.ConfigError):
    """A checkpoint was written under a config that differs from the requested one."""


# Train fields that may change on resume without invalidating the saved state.
# (``steps`` is not: it shapes the learning-rate schedule.)
RESUMABLE_TRAIN_FIELDS = {"eval_every", "eval_windows", "ckpt_every",
                          "keep_checkpoints", "steps_per_call"}


def manager(run_dir: str | Path, keep: int = 3) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=opts)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    mngr.save(int(step), args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any | None:
    """Latest (or given) checkpoint restored into ``target``'s structure/shardings."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def run_config(env_name: str, model_cfg, train_cfg, data_dir, split: dict) -> dict:
    return {"env_name": env_name, "model": cfglib.to_dict(model_cfg),
            "train": cfglib.to_dict(train_cfg), "data_dir": str(data_dir), "split": split}


def write_config(run_dir: str | Path, cfg: dict) -> None:
    path = Path(run_dir) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tmp.replace(path)


# Fields added after runs were written, with the value that rebuilds such a run's model.
LEGACY_DEFAULTS = {"model": {"factored_obs": False}}


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json)")
    saved = json.loads(path.read_text())
    for section, defaults in LEGACY_DEFAULTS.items():
        for key, value in defaults.items():
            saved.get(section, {}).setdefault(key, value)
    return saved


def check_compatible(saved: dict, env_name: str, model_cfg, train_cfg, run_dir) -> None:
    """Raise ConfigMismatch listing every incompatible field (``section.key: saved vs new``)."""
    model_type, train_type = type(model_cfg), type(train_cfg)
    problems = []
    if saved["env_name"] != env_name:
        problems.append(f"env_name: saved {saved['env_name']!r} vs requested {env_name!r}")
    for section, typ, new in (("model", model_type, model_cfg), ("train", train_type, train_cfg)):
        old = cfglib.from_dict(typ, saved[section])
        for key, (a, b) in cfglib.diff(old, new).items():
            if section == "train" and key in RESUMABLE_TRAIN_FIELDS:
                continue
            problems.append(f"{section}.{key}: saved {a!r} vs requested {b!r}")
    if problems:
        raise ConfigMismatch(f"checkpoint in {run_dir} was written under an incompatible "
                             "config:\n  " + "\n  ".join(problems))


def append_metrics(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: str | Path) -> Path | None:
    """metrics.png: validation curves over training and accuracy by context position."""
    records = [r for r in read_metrics(run_dir) if "val" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in records]
    keys = ("action_acc", "reward_acc", "reward_recall", "reward_recall_seen",
            "reward_recall_arrival", "reward_false_alarm", "obs_acc")
    value = lambda r, k: np.nan if r["val"].get(k) is None else r["val"][k]
    for k in keys:
        axes[0].plot(steps, [value(r, k) for r in records], label=k)
    axes[0].set(title="validation (test tasks)", xlabel="step", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    train = [r for r in read_metrics(run_dir) if "loss" in r]
    axes[1].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[1].set(title="train loss", xlabel="step", yscale="log")
    last = records[-1]["val"]["by_position"]
    for k, v in last.items():
        axes[2].plot(range(1, len(v) + 1), [np.nan if x is None else x for x in v], label=k)
    axes[2].set(title=f"by context position (step {steps[-1]})", xlabel="transition in context",
                ylim=(0, 1.02))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


__all__ = ["ConfigMismatch", "append_metrics", "check_compatible", "manager", "plot_metrics",
           "read_config", "read_metrics", "restore", "run_config", "save", "write_config"]
