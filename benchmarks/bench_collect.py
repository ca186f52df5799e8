"""Collection speed and quality: PPO histories at the paper settings.

    python benchmarks/bench_collect.py [--quick] [--devices N]

Cases: Darkroom (81 tasks), Darkroom-Permuted (120), a 500-task Dark Key-to-Door subset,
and Darkroom at 8 / 27 / 81 tasks (how time grows with the task count). Each case runs in
a fresh subprocess (so XLA's device count can be set and compile time is measured cold),
reporting compile and run time separately. Prints a markdown table, writes
``benchmarks/results/collect.json``. ``--quick`` shrinks every case to a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "collect.json"

# (label, env, number of tasks or None for all)
CASES = [
    ("darkroom-8", "darkroom", 8),
    ("darkroom-27", "darkroom", 27),
    ("darkroom-81", "darkroom", 81),
    ("permuted-120", "darkroom_permuted", 120),
    ("key_to_door-500", "dark_key_to_door", 500),
]
QUICK = dict(steps_per_stream=100, n_streams=10)  # the paper PPO otherwise


def one_case(env_name: str, n_tasks: int, quick: bool, block: int | None = None) -> dict:
    """Collect ``n_tasks`` tasks of the 'all' split in this process; timings and quality."""
    import jax
    import numpy as np

    import dicp_envs
    from dicp_jax.collect import DEFAULT_BLOCK, collect
    from dicp_jax.sources.ppo import paper_config

    env, _ = dicp_envs.make(env_name)
    cfg = paper_config(env_name, **(QUICK if quick else {}))
    idx = dicp_envs.split_indices(env_name, "all")[:n_tasks]
    stats: dict = {}
    t0 = time.perf_counter()
    block = DEFAULT_BLOCK if block is None else block
    _, rets = collect(env, idx, cfg, stats=stats, block=block)
    wall = time.perf_counter() - t0
    opt = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[idx])))
    frac = rets / opt[:, None]
    return dict(env=env_name, tasks=int(len(idx)), devices=len(jax.devices()),
                streams=cfg.n_streams, steps_per_stream=cfg.steps_per_stream,
                env_steps=stats["env_steps"], compile_s=stats["compile_s"],
                run_s=stats["run_s"], wall_s=wall, chunk=stats["chunk"], block=block,
                steps_per_s=stats["env_steps"] / stats["run_s"],
                last5_pct_opt=float(100 * frac[:, -5:].mean()),
                first_pct_opt=float(100 * frac[:, 0].mean()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    p.add_argument("--devices", type=int, default=1,
                   help="XLA CPU devices to split tasks over (default 1)")
    p.add_argument("--only", default=None, help="comma-separated case labels")
    p.add_argument("--block", type=int, default=None,
                   help="tasks vmapped together per device (default: collect.DEFAULT_BLOCK)")
    p.add_argument("--one", nargs=2, metavar=("ENV", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_case(args.one[0], int(args.one[1]), args.quick,
                                              args.block)))
        return 0
    n_dev = args.devices
    env_vars = {**os.environ,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_dev}"}
    cases = CASES if args.only is None else [c for c in CASES if c[0] in args.only.split(",")]
    if args.quick:
        cases = [(label, env, min(n, 4)) for label, env, n in cases
                 if label in ("darkroom-8", "key_to_door-500")]
    rows = []
    for label, env_name, n in cases:
        cmd = [sys.executable, __file__, "--one", env_name, str(n)] + (["--quick"] * args.quick)
        cmd += [] if args.block is None else ["--block", str(args.block)]
        out = subprocess.run(cmd, env=env_vars, capture_output=True, text=True)
        line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append({"case": label, **json.loads(line[0][7:])})
        r = rows[-1]
        print(f"{label}: compile {r['compile_s']:.1f}s run {r['run_s']:.1f}s", flush=True)
    print("\n| case | tasks | env steps | devices | compile (s) | run (s) | env steps/s "
          "| last-5 return (% opt) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['tasks']} | {r['env_steps']:,} | {r['devices']} | "
              f"{r['compile_s']:.1f} | {r['run_s']:.1f} | {r['steps_per_s']:,.0f} | "
              f"{r['last5_pct_opt']:.1f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "cpu_count": os.cpu_count(),
                                   "rows": rows}, indent=1))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
