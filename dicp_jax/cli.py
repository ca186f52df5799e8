"""``dicp`` command line: one subcommand per stage, each in ``dicp_jax/commands/<name>.py``.

A command module exposes ``configure(parser)`` and ``run(args) -> int``; it is imported only
when its subcommand runs, so ``dicp --help`` stays instant.

``main`` is the one error boundary: a user's mistake (a bad option, key, value or path, a
refused combination) ends as ``dicp <command>: <message>`` on one line with exit code 2, a
failed run (a corrupted dataset or checkpoint) with 1, Ctrl-C with 130. Anything else is a
bug and keeps its traceback (so does everything with ``DICP_TRACEBACK=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dicp_jax import __version__

COMMANDS = {
    "collect": "record PPO learning histories on many tasks (vmapped, one jit per chunk)",
    "train": "train the AD/DICP Transformer on a history dataset",
    "eval": "meta-test a trained run on held-out tasks (planner on or off)",
    "experiment": "collect -> train -> eval -> table and plot, reusing what is valid",
    "list": "list the environments, experiments, methods, planners and presets",
    "bench": "run the benchmarks behind BENCHMARKS.md",
}


def use_cpu_devices(argv: list[str]) -> None:
    """Expose one XLA CPU device per usable core (``--cpu-devices N`` overrides; 1 = off).

    Why: per-task PPO updates and small matmuls barely use XLA CPU's intra-op threads, while
    task- or batch-sharding over N CPU devices runs N programs side by side (measured: PPO
    collection 2.1x faster on 2 cores). Only the CPU platform is affected, so GPU/TPU runs are
    unchanged. Must happen before jax is imported; an explicit device count in XLA_FLAGS wins."""
    from dicp_jax.commands.common import UsageError

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "--cpu-devices" in argv:
        i = argv.index("--cpu-devices")
        if i + 1 >= len(argv) or not argv[i + 1].isdigit() or int(argv[i + 1]) < 1:
            raise UsageError("--cpu-devices needs a positive integer")
        n = int(argv[i + 1])
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules or "device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicp", description="In-context RL (AD) and in-context planning (DICP) in JAX.",
        epilog="exit codes: 0 done, 1 the run failed (e.g. a corrupted dataset or checkpoint), "
               "2 a usage or config error (nothing was run or written), 130 interrupted")
    parser.add_argument("--version", action="version", version=f"dicp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # only the chosen command pays for its imports
            importlib.import_module(f"dicp_jax.commands.{name}").configure(p)
            if name != "list":
                p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                               help="XLA CPU devices to shard over (default: one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dicp_jax.commands.common import EXIT_INTERRUPT, exit_code, one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    prefix = f"dicp {command}" if command else "dicp"
    try:
        use_cpu_devices(argv)
        args = build_parser(argv).parse_args(argv)
        if args.command is None:
            build_parser([]).print_help()
            return 0
        module = importlib.import_module(f"dicp_jax.commands.{args.command}")
        return int(module.run(args) or 0)
    except KeyboardInterrupt as e:  # the command may say what was kept
        print(f"{prefix}: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPT
    except Exception as e:
        code = exit_code(e)
        if code is None or os.environ.get("DICP_TRACEBACK"):
            raise
        print(f"{prefix}: {one_line(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
