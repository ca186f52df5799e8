"""``dicp list [WHAT]``: what there is to run, with the names the other commands accept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("envs", "experiments", "methods", "planners", "presets")



def registry_rows(package: str) -> list[str]:
    """``name: first docstring line`` of the module behind each entry of the registry
    ``dicp_jax.<package>`` (a method is a module; a planner names its ``make``)."""
    import importlib
    import sys

    registry = importlib.import_module(f"dicp_jax.{package}")
    rows = []
    for name in registry.names():
        entry = registry.get(name)
        module = entry if hasattr(entry, "__file__") else sys.modules[entry.make.__module__]
        doc = (module.__doc__ or "").strip().splitlines()
        rows.append(f"{name}: {doc[0]}" if doc else name)
    return rows


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=KINDS, default=None,
                   help="one kind only (default: all)")


def env_rows() -> list[str]:
    import dicp_envs

    rows = []
    for name in dicp_envs.names():
        env, _ = dicp_envs.make(name)
        spec = dicp_envs.family(name)
        n_train = len(dicp_envs.split_indices(name, "train"))
        n_test = len(dicp_envs.split_indices(name, "test"))
        dim = getattr(env, "action_dim", None)
        actions = f"{env.num_actions} actions" if dim is None else f"{dim}-D actions"
        rows.append(f"{name}: {n_train + n_test} tasks ({n_train} train / {n_test} "
                    f"test, split seed {spec.split_seed}), horizon {env.horizon}, {actions}, "
                    f"source {spec.source}")
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
        "methods": lambda: registry_rows("methods"),
        "planners": lambda: registry_rows("planning"),
        "presets": preset_rows,
    }
    for kind in [args.what] if args.what else KINDS:
        print(f"{kind}:")
        for row in sections[kind]():
            print(f"  {row}")
    return 0
