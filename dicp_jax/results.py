"""Result tables (markdown + CSV) and learning-curve plots of meta-test returns.

Inputs are per-method arrays ``returns [n_tasks, E]``; tasks of several train/test splits
are pooled, and every figure is a mean with its standard error over tasks: a raw return,
and where the env has an oracle (``optimal [n_tasks]``) a fraction of the optimal return,
or where it defines success (``success``, per method ``[n_tasks, E]`` booleans) the rate of
successful episodes. Neither is required: a task family without an oracle still gets its
table.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

BANDS = ((1, 5), (6, 10), (11, 25), (26, 50), (51, 100))
POINTS = (1, 10, 25, 50, 100)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    return float(x.mean()), float(se)


# Every column a row may have, in the order of the CSV.
FIELDS = ("method", "column", "first_episode", "last_episode", "mean_return", "se_return",
          "mean_fraction", "se_fraction", "mean_success", "se_success", "cumulative_success",
          "n_tasks")


def summarise(returns: Mapping[str, np.ndarray], optimal: np.ndarray | None = None,
              success: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """One row per (method, column): episode bands, then single-episode points. With
    ``optimal`` each row also holds the fraction of the optimal return; with ``success``
    (per method, bool ``[n_tasks, E]``; methods without one get no rate) the rate of
    successful episodes, and the paper code's cumulative rate: the fraction of tasks that
    succeeded in any episode up to the column's last one (what its Meta-World table shows)."""
    rows = []
    # a band cut by the table's last episode is named by it (30 episodes: "ep 26-30")
    longest = max(np.shape(ret)[1] for ret in returns.values())
    for method, ret in returns.items():
        ret = np.asarray(ret, np.float64)
        ok = None if success is None or method not in success else (
            np.asarray(success[method], np.float64))
        n_ep = ret.shape[1]
        cols = [(f"ep {a}-{min(b, longest)}", a, min(b, n_ep)) for a, b in BANDS if a <= n_ep]
        cols += [(f"ep {p}", p, p) for p in POINTS if p <= n_ep]
        for name, a, b in cols:
            per_task = ret[:, a - 1 : b].mean(1)
            m, se = mean_se(per_task)
            row = dict(method=method, column=name, first_episode=a, last_episode=b,
                       mean_return=m, se_return=se)
            if optimal is not None:
                row["mean_fraction"], row["se_fraction"] = mean_se(per_task / optimal)
            if ok is not None:
                row["mean_success"], row["se_success"] = mean_se(ok[:, a - 1 : b].mean(1))
                row["cumulative_success"] = float(ok[:, :b].max(1).mean())
            rows.append(row | {"n_tasks": len(per_task)})
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """The rows as CSV; columns in ``FIELDS`` order, those no row has left out."""
    present = {k for r in rows for k in r}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in FIELDS if k in present])
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: Sequence[dict], title: str, notes: Sequence[str] = ()) -> str:
    """Methods as rows, bands/points as columns: ``return ± se``, then in parentheses the
    fraction of optimal and / or the success rate, where the rows hold them."""
    # Bands, then points, each in episode order (methods may run different episode counts).
    order = {r["column"]: ("-" not in r["column"], r["first_episode"]) for r in rows}
    columns = sorted(order, key=order.get)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["column"]): r for r in rows}
    out = [f"### {title}", "", "| method | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
    for m in methods:
        vals = []
        for c in columns:
            r = cell.get((m, c))
            vals.append("" if r is None else _cell(r))
        out.append(f"| {m} | " + " | ".join(vals) + " |")
    out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _cell(r: Mapping) -> str:
    """``return ± se`` with ``(fraction of optimal, success rate)`` where present."""
    extra = ([f"{r['mean_fraction']:.0%}"] if "mean_fraction" in r else []) + (
        [f"{r['mean_success']:.0%} success per episode, {r['cumulative_success']:.0%} "
         "cumulative"] if "mean_success" in r else [])
    return (f"{r['mean_return']:.2f} ± {r['se_return']:.2f}"
            + (f" ({', '.join(extra)})" if extra else ""))


def plot(returns: Mapping[str, np.ndarray], optimal: np.ndarray | None, path: Path, title: str,
         horizon: int, reference: Mapping[str, Mapping[int, float]] | None = None) -> None:
    """Mean return per meta-test episode (± s.e. over tasks) of every method, the mean
    optimal return (if given) as a dashed line, and the paper's figures as dotted points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for method, ret in returns.items():
        ret = np.asarray(ret, np.float64)
        x = np.arange(1, ret.shape[1] + 1)
        m = ret.mean(0)
        se = ret.std(0, ddof=1) / np.sqrt(len(ret)) if len(ret) > 1 else np.zeros_like(m)
        (line,) = ax.plot(x, m, label=method, lw=1.8)
        ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, lw=0)
    for method, points in (reference or {}).items():
        eps = sorted(points)
        ax.plot([int(e) for e in eps], [points[e] for e in eps], "o:", ms=4, alpha=0.7,
                label=f"{method} (paper figure)")
    if optimal is not None:
        ax.axhline(float(np.mean(optimal)), color="k", ls="--", lw=1, label="optimal (mean)")
    ax.set_xlabel(f"meta-test episode ({horizon} env steps each)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
