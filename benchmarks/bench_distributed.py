"""Multi-process collection (``jax.distributed``): 1 process x 2 devices against 2 processes x
1 device, the same work, and what the coordinator costs.

    python benchmarks/bench_distributed.py [--quick] [--tasks N] [--env ENV]

Each layout runs ``collect_dataset`` in fresh processes (XLA's device count is set per
process; compile time is measured cold and apart from run time). A 2-process run also
reports the coordinator's share: joining the run (``distributed.initialize``), the first
barrier (it compiles the tiny cross-process program behind it) and one more barrier (the
latency of a synchronisation), plus the wall time of the whole ``collect_dataset`` call,
whose surplus over compile + run is the barriers and the writing. Prints a markdown table
and writes ``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"
QUICK = dict(steps_per_stream=100, n_streams=10)  # the paper PPO otherwise


def worker(args: argparse.Namespace) -> dict:
    """One process of a layout: join (when several), collect, report timings."""
    import numpy as np

    from dicp_jax import distributed
    from dicp_jax.collect import collect_dataset
    from dicp_jax.sources.ppo import paper_config

    out: dict = {"process": args.process_id, "processes": args.processes}
    if args.processes > 1:
        t0 = time.perf_counter()
        layout = distributed.Layout(f"localhost:{args.port}", args.processes, args.process_id)
        distributed.initialize(layout, lambda msg: os._exit(print(msg) or 1))
        out["init_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        distributed.barrier("bench-first")
        out["first_barrier_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        distributed.barrier("bench-second")
        out["barrier_s"] = time.perf_counter() - t0
    import jax

    cfg = paper_config(args.env, **(QUICK if args.quick else {}))
    stats: dict = {}
    t0 = time.perf_counter()
    collect_dataset(args.env, args.out, cfg, task_index=np.arange(args.tasks), stats=stats)
    out.update(wall_s=time.perf_counter() - t0, local_devices=jax.local_device_count(),
               **{k: stats.get(k, 0.0) for k in ("compile_s", "run_s", "env_steps")})
    return out


def launch(n_proc: int, devices: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """Run one layout; the per-process results."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, __file__, "--worker", "--env", args.env, "--tasks", str(args.tasks),
           "--out", str(out), "--processes", str(n_proc), "--port", str(port)]
    cmd += ["--quick"] if args.quick else []
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for i in range(n_proc)]
    results = []
    for p in procs:
        text, _ = p.communicate()
        line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            raise RuntimeError(f"worker failed ({p.returncode}): {text[-2000:]}")
        results.append(json.loads(line[0][len("RESULT "):]))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    p.add_argument("--env", default="darkroom")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, n_proc, devices in (("1 process x 2 devices", 1, 2),
                                       ("2 processes x 1 device", 2, 1)):
            t0 = time.perf_counter()
            per = launch(n_proc, devices, args, Path(tmp) / label.replace(" ", "_"))
            rows.append({"layout": label, "processes": n_proc, "devices_each": devices,
                         "launch_to_exit_s": time.perf_counter() - t0, "per_process": per})
    print("| layout | compile (s) | run (s) | collect_dataset wall (s) | join (s) | "
          "first barrier (s) | barrier (s) | env steps/s | start to exit (s) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = r["per_process"]
        steps = sum(x["env_steps"] for x in per)
        run = max(x["run_s"] for x in per)
        cell = lambda k, per=per: (f"{max(x[k] for x in per):.2f}" if k in per[0] else "-")
        print(f"| {r['layout']} | {max(x['compile_s'] for x in per):.1f} | {run:.1f} | "
              f"{max(x['wall_s'] for x in per):.1f} | {cell('init_s')} | "
              f"{cell('first_barrier_s')} | {cell('barrier_s')} | {steps / run:,.0f} | "
              f"{r['launch_to_exit_s']:.1f} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"env": args.env, "tasks": args.tasks, "quick": args.quick,
                                   "load_average": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
