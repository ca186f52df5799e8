"""Result tables (markdown + CSV) and learning-curve plots of meta-test returns.

Inputs are per-method arrays ``returns [n_tasks, E]`` with ``optimal [n_tasks]``; tasks of
several train/test splits are pooled, and every figure is a mean with its standard error
over tasks, both as a raw return and as a fraction of the optimal return.
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


def summarise(returns: Mapping[str, np.ndarray], optimal: np.ndarray) -> list[dict]:
    """One row per (method, column): episode bands, then single-episode points."""
    rows = []
    for method, ret in returns.items():
        ret = np.asarray(ret, np.float64)
        n_ep = ret.shape[1]
        cols = [(f"ep {a}-{b}", a, b) for a, b in BANDS if a <= n_ep]
        cols = [(name, a, min(b, n_ep)) for name, a, b in cols]
        cols += [(f"ep {p}", p, p) for p in POINTS if p <= n_ep]
        for name, a, b in cols:
            per_task = ret[:, a - 1 : b].mean(1)
            m, se = mean_se(per_task)
            fm, fse = mean_se(per_task / optimal)
            rows.append(dict(method=method, column=name, first_episode=a, last_episode=b,
                             mean_return=m, se_return=se, mean_fraction=fm, se_fraction=fse,
                             n_tasks=len(per_task)))
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: Sequence[dict], title: str, notes: Sequence[str] = ()) -> str:
    """Methods as rows, bands/points as columns: ``return ± se (fraction of optimal)``."""
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
            vals.append("" if r is None else
                        f"{r['mean_return']:.2f} ± {r['se_return']:.2f} ({r['mean_fraction']:.0%})")
        out.append(f"| {m} | " + " | ".join(vals) + " |")
    out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def plot(returns: Mapping[str, np.ndarray], optimal: np.ndarray, path: Path, title: str,
         horizon: int, reference: Mapping[str, Mapping[int, float]] | None = None) -> None:
    """Mean return per meta-test episode (± s.e. over tasks), optimal as a dashed line."""
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
    ax.axhline(float(np.mean(optimal)), color="k", ls="--", lw=1, label="optimal (mean)")
    ax.set_xlabel(f"meta-test episode ({horizon} env steps each)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
