"""What the commands share: the errors ``cli.main`` turns into one-line messages and exit
codes, and the checks every command runs before it starts any work or writes anything."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# Exit codes: a usage or config error (fix the command line), a runtime failure (the work,
# or an input it reads, went wrong), an interrupt.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPT = 2, 1, 130


class UsageError(ValueError):
    """A wrong option, path or combination on the command line (exit 2)."""


class RunError(RuntimeError):
    """The work could not be done, e.g. a corrupted checkpoint (exit 1)."""


def exit_code(err: BaseException) -> int | None:
    """The exit code of a known user-facing error; None for anything else (a bug, which
    keeps its traceback)."""
    from dicp_jax.config import ConfigError
    from dicp_jax.distributed import DistributedError
    from dicp_jax.history import DatasetError

    if isinstance(err, UsageError | ConfigError | FileNotFoundError | FileExistsError):
        return EXIT_USAGE
    if isinstance(err, RunError | DatasetError | DistributedError):
        return EXIT_FAILURE
    return None


def one_line(err: BaseException | str) -> str:
    """A message on one line: a list under a ``...:`` header is joined with ``; ``."""
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out or type(err).__name__


def warn(command: str, message: str) -> None:
    print(f"dicp {command}: warning: {message}", file=sys.stderr, flush=True)


def positive(option: str, value: int | float | None) -> None:
    """Refuse a count or size that must be positive (None: not given)."""
    if value is not None and value <= 0:
        raise UsageError(f"{option} must be positive, got {value}")


def print_config(command: str, resolved: dict[str, Any]) -> int:
    """``--dry-run``: the resolved configs as JSON on stdout, nothing run or written."""
    from dicp_jax.config import to_dict

    def plain(v: Any) -> Any:
        if hasattr(v, "__dataclass_fields__"):
            return to_dict(v)
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    text = json.dumps({"command": command, **plain(resolved)}, indent=2, default=list)
    # lists of numbers or names on one line each (task indices, hidden sizes)
    print(re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                 lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text))
    return 0


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the finished checkpoints in a run, read off the directory names (orbax
    writes ``checkpoints/<step>/`` and renames a temporary directory when it is done), so
    that asking does not create anything."""
    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit())


def read_run(run_dir: Path) -> dict:
    """A run's ``config.json``; a missing directory or file is a usage error."""
    from dicp_jax import checkpoint as ckpt

    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir} is not a training run (no config.json)")
    try:
        return ckpt.read_config(run_dir)
    except json.JSONDecodeError as e:
        raise RunError(f"{run_dir / 'config.json'}: not valid JSON ({e})") from None


def load_run(run_dir: Path) -> Any:
    """``train.load_trained`` with every way a checkpoint can be unreadable (orbax and
    tensorstore raise many types, some plain ``Exception``) as one line naming it."""
    from dicp_jax.train import load_trained

    steps = checkpoint_steps(run_dir)
    if not steps:
        raise UsageError(f"{run_dir} has no checkpoint yet (train it, or --resume its training)")
    try:
        return load_trained(run_dir)
    except Exception as e:  # a restore failure of any kind means the same to the user
        where = run_dir / "checkpoints" / str(steps[-1])
        detail = one_line(e)
        detail = detail if len(detail) <= 200 else detail[:200] + " ..."
        raise RunError(f"{where}: checkpoint unreadable ({type(e).__name__}: {detail})") from e


def check_out_file(option: str, path: Path | None) -> None:
    """An output file must be creatable before the work whose result it holds starts."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: directory {path.parent} does not exist")
    import os

    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{option} {path}: directory {path.parent} is not writable")
