"""``dicp list [WHAT]``: what there is to run, with the names the other commands accept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("envs", "experiments", "methods", "planners", "presets")

METHODS = {
    "ad": "Algorithm Distillation Transformer with in-context world-model heads "
          "(train with dynamics_strength=0 for plain AD); meta-tested with a planner below",
}
PLANNERS = {
    "policy": "act from the imitation (policy) head: AD behaviour (dicp eval --planner policy)",
    "beam": "beam search with the in-context world model: DICP (dicp eval --planner beam)",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=KINDS, default=None,
                   help="one kind only (default: all)")


def env_rows() -> list[str]:
    import dicp_envs

    rows = []
    for name in dicp_envs.names():
        env, _ = dicp_envs.make(name)
        spec = dicp_envs.spec(name)
        n_train = len(dicp_envs.split_indices(name, "train"))
        n_test = len(dicp_envs.split_indices(name, "test"))
        rows.append(f"{name}: {n_train + n_test} tasks ({n_train} train / {n_test} test, "
                    f"split seed {spec.split_seed}), horizon {env.horizon}, "
                    f"{env.num_actions} actions")
    return rows


def experiment_rows() -> list[str]:
    from dicp_jax.experiment import EXPERIMENTS

    rows = []
    for path in sorted(Path(EXPERIMENTS).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            rows.append(f"{path.stem}: (not valid JSON)")
            continue
        about = str(data.get("description", "")).split(". ")[0].rstrip(".")
        rows.append(f"{path.stem}: env {data.get('env')}, preset {data.get('preset', 'cpu')}"
                    + (f"; {about}" if about else ""))
    return rows


def preset_rows() -> list[str]:
    from dicp_jax.train import PRESETS

    return [f"{name}: {cfg.steps} steps, batch {cfg.batch_size} (dicp train --preset {name})"
            for name, cfg in PRESETS.items()]


def run(args: argparse.Namespace) -> int:
    sections = {
        "envs": env_rows,
        "experiments": experiment_rows,
        "methods": lambda: [f"{k}: {v}" for k, v in METHODS.items()],
        "planners": lambda: [f"{k}: {v}" for k, v in PLANNERS.items()],
        "presets": preset_rows,
    }
    for kind in [args.what] if args.what else KINDS:
        print(f"{kind}:")
        for row in sections[kind]():
            print(f"  {row}")
    return 0
