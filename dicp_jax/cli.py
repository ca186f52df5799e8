"""``dicp`` command line: one subcommand per stage, each in ``dicp_jax/commands/<name>.py``.

A command module exposes ``configure(parser)`` and ``run(args) -> int``; it is imported only
when its subcommand runs, so ``dicp --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "collect": "record PPO learning histories on many tasks (vmapped, one jit per chunk)",
    "train": "train the AD/DICP Transformer on a history dataset",
    "eval": "meta-test a trained run on held-out tasks (planner on or off)",
    "experiment": "collect -> train -> eval -> table and plot, reusing what is valid",
    "bench": "run the benchmarks behind BENCHMARKS.md",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="dicp", description="In-context RL (AD) and in-context planning (DICP) in JAX."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # only the chosen command pays for its imports
            importlib.import_module(f"dicp_jax.commands.{name}").configure(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"dicp_jax.commands.{args.command}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
