"""``dicp bench NAME [args...]``: run ``benchmarks/bench_<NAME>.py``'s ``main(args)``.

The benchmarks live next to the package in the repository (not installed), so each script
is loaded from its path with importlib. ``all`` runs every existing script in order.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import dicp_jax

BENCHMARKS = ("envs", "collect", "train", "planner", "distributed", "speedup", "continuous",
              "adaptive")


def bench_dir() -> Path:
    return Path(dicp_jax.__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """Import ``benchmarks/bench_<name>.py`` by path; a clear error if it is missing."""
    path = bench_dir() / f"bench_{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r} has no script: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"dicp_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"{path} defines no main(argv) function")
    return module


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=[*BENCHMARKS, "all"],
                        help="which benchmark; 'all' runs every existing script in order")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="passed to the script's main(), e.g. --quick")


def run(args: argparse.Namespace) -> int:
    if args.name != "all":
        try:
            module = load(args.name)
        except (FileNotFoundError, AttributeError) as err:
            print(f"dicp bench: {err}")
            return 2
        return int(module.main(list(args.args)) or 0)
    present = [n for n in BENCHMARKS if (bench_dir() / f"bench_{n}.py").is_file()]
    missing = [n for n in BENCHMARKS if n not in present]
    if missing:
        print(f"dicp bench all: skipping {', '.join(missing)} (no script yet)")
    rc = 0
    for name in present:
        print(f"\n## bench {name}\n", flush=True)
        rc = max(rc, int(load(name).main(list(args.args)) or 0))
    return rc
