"""Environment throughput: env steps/s of a jitted, vmapped random-action rollout.

Every env runs the same harness: ``lax.scan`` over steps, actions sampled inside the scan
(one ``randint`` over the whole batch per step), ``vmap(env.step)`` over the batch (all
tasks x ``streams`` copies each), auto-reset inside ``step``. gymnax CartPole-v1 runs the
same harness as a reference point. Compile time is measured separately (AOT
``lower().compile()``); the run is timed best of ``--repeats`` with ``block_until_ready``.

    python benchmarks/bench_envs.py [--quick] [--steps N] [--out PATH]
    dicp bench envs --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

RESULTS = Path(__file__).resolve().parent / "results" / "envs.json"
# name -> (streams per task in a full run, streams in a quick run)
GRID_ENVS = {
    "darkroom": (1024, 64),
    "dark_key_to_door": (16, 1),
    "darkroom_permuted": (1024, 64),
}
TARGET = 10e6  # Darkroom env steps/s on a 2-core CPU


def make_rollout(env: Any, n_steps: int, batch: int, params_axis: int | None):
    """jit(key, params) -> total reward per stream, after ``n_steps`` random-action steps.

    The reduction to a total keeps XLA from dead-code-eliminating the rollout while keeping
    the output tiny, so the clock measures stepping, not device-to-host copies.
    """
    step = jax.vmap(env.step, in_axes=(None, 0, 0, params_axis))
    reset = jax.vmap(env.reset, in_axes=(None, params_axis), axis_size=batch)
    n_actions = env.num_actions

    def run(key: jax.Array, params: Any) -> jax.Array:
        key, k_reset = jax.random.split(key)
        _, state = reset(k_reset, params)

        def body(carry, _):
            state, key, total = carry
            key, k_act, k_step = jax.random.split(key, 3)
            action = jax.random.randint(k_act, (batch,), 0, n_actions)  # [B]
            _, state, reward, _, _, _ = step(k_step, state, action, params)
            return (state, key, total + reward), None

        init = (state, key, jnp.zeros((batch,), jnp.float32))
        (_, _, total), _ = jax.lax.scan(body, init, None, length=n_steps)
        return total  # [B]

    return jax.jit(run)


def time_rollout(env: Any, params: Any, batch: int, n_steps: int, repeats: int,
                 params_axis: int | None) -> dict[str, float]:
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = make_rollout(env, n_steps, batch, params_axis).lower(key, params).compile()
    compile_s = time.perf_counter() - t0
    compiled(key, params).block_until_ready()  # warm-up (allocations, thread pools)
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        compiled(jax.random.key(i + 1), params).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"batch": batch, "steps": n_steps, "compile_s": compile_s, "run_s": best,
            "steps_per_s": batch * n_steps / best}


def bench_grid(name: str, streams: int, n_steps: int, repeats: int) -> dict[str, Any]:
    import dicp_envs

    env, _ = dicp_envs.make(name)
    tasks = dicp_envs.tasks(name, "all")
    n_tasks = jax.tree.leaves(tasks)[0].shape[0]
    params = jax.tree.map(lambda x: jnp.repeat(x, streams, axis=0), tasks)  # [N*S, ...]
    row = time_rollout(env, params, n_tasks * streams, n_steps, repeats, params_axis=0)
    return {"env": name, "tasks": n_tasks, "streams": streams, **row}


def bench_cartpole(batch: int, n_steps: int, repeats: int) -> dict[str, Any]:
    import gymnax

    env, params = gymnax.make("CartPole-v1")
    row = time_rollout(env, params, batch, n_steps, repeats, params_axis=None)
    return {"env": "gymnax CartPole-v1", "tasks": 1, "streams": batch, **row}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| env | tasks x streams | steps | compile (s) | run (s) | env steps/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['tasks']} x {r['streams']} | {r['steps']} | "
                     f"{r['compile_s']:.2f} | {r['run_s']:.3f} | {r['steps_per_s'] / 1e6:.1f} M |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_envs", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch/steps smoke run")
    parser.add_argument("--steps", type=int, default=None, help="scan length (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; best is kept")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results (default {RESULTS} for full runs, none for --quick)")
    args = parser.parse_args(argv)
    n_steps = args.steps or (100 if args.quick else 1000)
    repeats = 1 if args.quick else args.repeats

    rows = [bench_grid(name, streams[1] if args.quick else streams[0], n_steps, repeats)
            for name, streams in GRID_ENVS.items()]
    rows.append(bench_cartpole(rows[0]["batch"], n_steps, repeats))
    print(table(rows))
    darkroom = rows[0]["steps_per_s"]
    verdict = "met" if darkroom >= TARGET else "MISSED"
    print(f"\nDarkroom target {TARGET / 1e6:.0f} M steps/s: {verdict} "
          f"({darkroom / 1e6:.1f} M); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs (other processes inflate timings)")

    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"quick": args.quick, "jax": jax.__version__, "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                "load_average_1m": os.getloadavg()[0], "machine": platform.processor(),
                "target_darkroom_steps_per_s": TARGET, "target_met": darkroom >= TARGET}
        out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
