"""Multiply-adds per action of every method with and without planning (``dicp_jax.flops``),
next to the paper's Table 7, on the Darkroom family's paper model sizes.

    python benchmarks/flops_table.py --out benchmarks/results/flops.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dicp_jax.flops import macs_per_action
from dicp_jax.model import ModelConfig
from dicp_jax.planning.beam import BeamConfig

# Table 7 of the paper (Darkroom / Key-to-Door and Permuted), as printed
PAPER = {"AD": ("6M", "20M"), "DPT": ("6M", "20M"), "IDT": ("8M", "8M"),
         "DICP-AD": ("2G", "18G"), "DICP-DPT": ("2G", "18G"), "DICP-IDT": ("147M", "147M")}


def human(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flops.json"))
    args = ap.parse_args()
    rows = {}
    for family, n, depth in (("darkroom", 80, 8), ("key_to_door/permuted", 200, 16)):
        cfg = ModelConfig(n_transit=n)
        for method in ("ad", "dpt", "idt"):
            plan_depth = 10 if method == "idt" else depth  # IDT's code searches depth 10
            name = method.upper()
            rows.setdefault(name, {})[family] = macs_per_action(method, cfg, 5)
            rows.setdefault(f"DICP-{name}", {})[family] = macs_per_action(
                method, cfg, 5, BeamConfig(beam_size=10, depth=plan_depth))
    print("| method | Darkroom (ours) | paper | Key-to-Door / Permuted (ours) | paper |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        a, b = PAPER[name]
        print(f"| {name} | {human(r['darkroom'])} | {a} | "
              f"{human(r['key_to_door/permuted'])} | {b} |")
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
