"""The run directory: config.json and orbax checkpoints (metrics: ``dicp_jax.reporting``).

``config.json`` records everything needed to rebuild the run (env, model and train configs,
dataset path, split); resuming or loading under a different config fails loudly, naming
each differing field with both values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dicp_jax import config as cfglib
from dicp_jax import distributed


class ConfigMismatch(cfglib.ConfigError):
    """A checkpoint was written under a config that differs from the requested one."""


# Train fields that may change on resume without invalidating the saved state.
# (``steps`` is not: it shapes the learning-rate schedule.)
RESUMABLE_TRAIN_FIELDS = {"eval_every", "eval_windows", "ckpt_every",
                          "keep_checkpoints", "steps_per_call"}


def manager(run_dir: str | Path, keep: int = 3) -> ocp.CheckpointManager:
    """Orbax's manager; in a multi-process run every process holds one and calls ``save``
    and ``restore`` together: orbax writes each array once (from the process holding its
    first replica) and the checkpoint's metadata from process 0."""
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


def run_config(env_name: str, model_cfg, train_cfg, data_dir, split: dict,
               codec_cfg=None) -> dict:
    """What rebuilds the run: env, codec options, model and train configs, data, split."""
    codec = {} if codec_cfg is None else cfglib.to_dict(codec_cfg)
    return {"env_name": env_name, "codec": codec, "model": cfglib.to_dict(model_cfg),
            "train": cfglib.to_dict(train_cfg), "data_dir": str(data_dir), "split": split}


def write_config(run_dir: str | Path, cfg: dict) -> None:
    """Write ``config.json`` (process 0 of a multi-process run, once every process has
    checked the run directory as it was before)."""
    distributed.barrier("dicp-config-checked")
    if not distributed.is_main():
        return
    path = Path(run_dir) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tmp.replace(path)


# Runs written before the grid codec owned its embedding options kept them in the model
# section (and predate factored_obs, whose absence meant False): moved on reading.
GRID_OPTIONS_BEFORE_CODECS = {"factored_obs": False, "obs_mix": False}


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json)")
    saved = json.loads(path.read_text())
    if "codec" not in saved:
        model = saved.get("model", {})
        saved["codec"] = {k: model.pop(k, v) for k, v in GRID_OPTIONS_BEFORE_CODECS.items()}
    return saved


def check_compatible(saved: dict, env_name: str, model_cfg, train_cfg, run_dir,
                     codec_cfg=None) -> None:
    """Raise ConfigMismatch listing every incompatible field (``section.key: saved vs new``);
    ``codec_cfg`` None means the codec's default options."""
    from dicp_jax import codecs

    problems = []
    if saved["env_name"] != env_name:
        problems.append(f"env_name: saved {saved['env_name']!r} vs requested {env_name!r}")
        raise ConfigMismatch(f"checkpoint in {run_dir} was written under an incompatible "
                             "config:\n  " + "\n  ".join(problems))
    if codec_cfg is None:
        import dicp_envs

        codec_cfg = codecs.config_type(dicp_envs.make(env_name)[0])()
    for section, new in (("codec", codec_cfg), ("model", model_cfg), ("train", train_cfg)):
        old = cfglib.from_dict(type(new), saved[section])
        for key, (a, b) in cfglib.diff(old, new).items():
            if section == "train" and key in RESUMABLE_TRAIN_FIELDS:
                continue
            problems.append(f"{section}.{key}: saved {a!r} vs requested {b!r}")
    if problems:
        raise ConfigMismatch(f"checkpoint in {run_dir} was written under an incompatible "
                             "config:\n  " + "\n  ".join(problems))


__all__ = ["ConfigMismatch", "check_compatible", "manager", "read_config", "restore",
           "run_config", "save", "write_config"]
