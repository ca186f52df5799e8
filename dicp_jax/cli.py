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
                add_layout_flags(p)
    return parser


def add_layout_flags(p: argparse.ArgumentParser) -> None:
    """The process layout of a multi-process run (``dicp_jax.distributed``), the same flags
    on every command. Without them a command is one process."""
    from dicp_jax.distributed import DEFAULT_TIMEOUT

    g = p.add_argument_group("multi-process runs (jax.distributed)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address, the same on every process; 'auto' lets JAX "
                        "read the layout from the cluster (SLURM, TPU pod slice)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes in the run")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process, 0 .. N-1 (process 0 writes the shared files)")
    g.add_argument("--coordinator-timeout", type=int, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds for all processes to join (default {DEFAULT_TIMEOUT})")


def join_run(args: argparse.Namespace, prefix: str) -> bool:
    """Join the multi-process run the flags describe (before any device is used); True if
    this is one. A bad layout raises ConfigError (exit 2); processes that do not all join
    in time end this one with a one-line message and exit 1."""
    if getattr(args, "coordinator", None) is None and getattr(args, "num_processes",
                                                               None) is None:
        return False
    from dicp_jax import distributed
    from dicp_jax.commands.common import EXIT_FAILURE

    layout = distributed.layout_from(args.coordinator, args.num_processes, args.process_id,
                                     args.coordinator_timeout)

    def give_up(message: str) -> None:  # from the watchdog thread: the main one is stuck
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILURE)

    distributed.initialize(layout, give_up)
    return True


def main(argv: list[str] | None = None) -> int:
    from dicp_jax.commands.common import EXIT_INTERRUPT, exit_code, one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    prefix = f"dicp {command}" if command else "dicp"
    multi = False
    try:
        use_cpu_devices(argv)
        args = build_parser(argv).parse_args(argv)
        if args.command is None:
            build_parser([]).print_help()
            return 0
        multi = join_run(args, prefix)
        if multi:  # which process said it
            import jax

            prefix = f"{prefix} [process {jax.process_index()} of {jax.process_count()}]"
        module = importlib.import_module(f"dicp_jax.commands.{args.command}")
        return int(module.run(args) or 0)
    except KeyboardInterrupt as e:  # the command may say what was kept
        print(f"{prefix}: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        return _leave(EXIT_INTERRUPT, multi)
    except Exception as e:
        code = exit_code(e)
        if code is None or os.environ.get("DICP_TRACEBACK"):
            raise
        print(f"{prefix}: {one_line(e)}", file=sys.stderr)
        return _leave(code, multi)


def _leave(code: int, multi: bool) -> int:
    """The exit code of a failed command. A process of a multi-process run exits at once:
    JAX's orderly shutdown waits at a barrier for every process, which a failed or
    departed peer never reaches (the wait would end in an abort), and the peers' next
    collective then fails on the closed connection instead of waiting for this one."""
    if multi:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
