"""Progress, messages and metrics leave the library as events; who listens decides the rest.

Library functions take a ``report: Reporter`` and call it with small ``Event`` records
instead of printing or drawing progress bars, so the CLI and the experiment runner show
them on the terminal (``console``), tests record them (``Recorder``) or drop them
(``silent``), and a notebook or a multi-host run can subscribe its own callable. Event
kinds:

- ``"stage"``: a pipeline step starts or is reused (``[1/3] collecting ...``).
- ``"progress"``: ``data = {"name", "done", "total"}`` (optional ``"unit"`` and
  ``"postfix"``), one bar per name; the message, if any, is the bar's description.
- ``"metrics"``: ``data`` holds the figures (e.g. a train step's loss, a validation); the
  message, if any, is their one-line summary.
- ``"message"`` and ``"warning"``: a line for the user.

The run directory's metrics record (``metrics.jsonl``, one JSON object per line) and its
plot (``metrics.png``) live here too: they are what a training run reports to its files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from dicp_jax.distributed import is_main

KINDS = ("stage", "progress", "metrics", "message", "warning")


class Event(NamedTuple):
    """One report: what kind, a line for a person (may be empty), the figures for a program."""

    kind: str
    message: str = ""
    data: Mapping[str, Any] = {}


Reporter = Callable[[Event], None]


def silent(event: Event) -> None:
    """Drop every event (tests, benchmarks, library defaults)."""


class Recorder:
    """Keep every event in ``events``; ``messages(kind)`` gives their lines (tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def messages(self, *kinds: str) -> list[str]:
        """Non-empty messages of the given kinds (all kinds when none given), in order."""
        return [e.message for e in self.events
                if e.message and (not kinds or e.kind in kinds)]

    def text(self, *kinds: str) -> str:
        """The messages joined by newlines, as the console would have shown them."""
        return "\n".join(self.messages(*kinds))


def recorder() -> Recorder:
    """A fresh ``Recorder``."""
    return Recorder()


def console(progress: bool = True, out: TextIO | None = None,
            err: TextIO | None = None) -> Reporter:
    """The terminal view: messages, stages and metrics summaries on ``out`` (stdout),
    warnings on ``err`` (stderr), and with ``progress`` one tqdm bar per progress name.

    Lines are written through tqdm while a bar is open, so they do not break it."""
    bars: dict[str, Any] = {}

    def write(line: str, stream: TextIO) -> None:
        if bars:
            from tqdm.auto import tqdm

            tqdm.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def on_progress(event: Event) -> None:
        d = event.data
        name, done, total = str(d["name"]), int(d["done"]), int(d["total"])
        bar = bars.get(name)
        if bar is not None and done < bar.n:  # a new run under the same name
            bars.pop(name).close()
            bar = None
        if bar is None:
            from tqdm.auto import tqdm

            bar = bars[name] = tqdm(total=total, initial=done, unit=d.get("unit", "it"),
                                    desc=event.message or name, dynamic_ncols=True)
        bar.update(done - bar.n)
        if d.get("postfix"):
            bar.set_postfix(d["postfix"])
        if done >= total:
            bars.pop(name).close()

    def report(event: Event) -> None:
        if event.kind == "progress":
            if progress:
                on_progress(event)
        elif event.kind == "warning":
            write(f"warning: {event.message}", sys.stderr if err is None else err)
        elif event.message:
            write(event.message, sys.stdout if out is None else out)

    return report


# -- the run directory's metrics record -------------------------------------------------------
def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Add one record (a JSON object) to ``run_dir/metrics.jsonl`` (process 0 alone in a
    multi-process run, ``dicp_jax.distributed``)."""
    if not is_main():
        return
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of ``run_dir/metrics.jsonl`` (none if it does not exist)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: str | Path) -> Path | None:
    """metrics.png: validation curves over training and accuracy by context position
    (process 0 alone in a multi-process run)."""
    if not is_main():
        return None
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


__all__ = ["KINDS", "Event", "Recorder", "Reporter", "append_metrics", "console",
           "plot_metrics", "read_metrics", "recorder", "silent"]
