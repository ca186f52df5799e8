"""Throughput of the continuous arm families (Reach, Push) and of Brax's own ``reacher``.

One harness for all: ``jit`` of reset + a ``lax.scan`` of ``--steps`` steps over a ``vmap``
of ``--batch`` envs, uniform random actions in [-1, 1] drawn inside the scan, the rewards
summed so XLA keeps the rollout. Compile time is measured on its own (AOT
``lower().compile()``); the run is timed best of ``--repeats`` after a warm-up.

- ``reach`` / ``push``: the dicp_envs families (gymnax ``step``, auto-reset included),
  one task per env (the first ``--batch`` of ``task_list()``).
- ``reacher[<backend>]``: ``brax.envs.get_environment("reacher", backend=...)``, Brax's
  2-link arm (no contacts, no auto-reset), on each of ``--reacher-backends``.
- ``--gripper-probe``: the measurement behind not building Pick-Place: the arm of
  ``dicp_envs.brax_arm`` with two servoed finger pads, gravity, a table and a free object,
  contacts among all of them (what a Meta-World pick-place needs), stepped like the
  families (same substeps and solver iterations), with random actions.

    python benchmarks/bench_brax_envs.py [--quick] [--batch 256] [--steps 100]
        [--reacher-backends mjx,positional,generalized] [--gripper-probe] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

RESULTS = Path(__file__).resolve().parent / "results" / "brax_envs.json"
FAMILIES = ("reach", "push")


def time_run(run: Callable[[jax.Array], jax.Array], batch: int, n_steps: int,
             repeats: int) -> dict[str, float]:
    """Compile ``run(key) -> [batch] totals`` ahead of time, then time it."""
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(key).compile()
    compile_s = time.perf_counter() - t0
    compiled(key).block_until_ready()  # warm-up (allocations, thread pools)
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        compiled(jax.random.key(i + 1)).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"batch": batch, "steps": n_steps, "compile_s": compile_s, "run_s": best,
            "steps_per_s": batch * n_steps / best}


def family_run(name: str, batch: int, n_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Reset + ``n_steps`` random steps of ``batch`` envs of a dicp_envs family."""
    import numpy as np

    import dicp_envs

    env, _ = dicp_envs.make(name)
    tasks = np.asarray(env.task_list())
    params = env.params_for(tasks[np.arange(batch) % len(tasks)])  # [B, ...]
    step, reset = jax.vmap(env.step), jax.vmap(env.reset)

    def run(key: jax.Array) -> jax.Array:
        key, k_reset = jax.random.split(key)
        _, state = reset(jax.random.split(k_reset, batch), params)

        def body(carry, k):
            state, total = carry
            k_act, k_step = jax.random.split(k)
            action = jax.random.uniform(k_act, (batch, env.action_dim), minval=-1.0,
                                        maxval=1.0)  # [B, 4]
            _, state, reward, _, _, _ = step(jax.random.split(k_step, batch), state, action,
                                             params)
            return (state, total + reward), None

        init = (state, jnp.zeros((batch,), jnp.float32))
        (_, total), _ = jax.lax.scan(body, init, jax.random.split(key, n_steps))
        return total  # [B]

    return run


def reacher_run(backend: str, batch: int, n_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Reset + ``n_steps`` random steps of ``batch`` Brax ``reacher`` envs."""
    import warnings

    from dicp_envs.brax_arm import physics

    physics()  # import mujoco quietly first
    from brax import envs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        env = envs.get_environment("reacher", backend=backend)

    def run(key: jax.Array) -> jax.Array:
        key, k_reset = jax.random.split(key)
        state = jax.vmap(env.reset)(jax.random.split(k_reset, batch))

        def body(carry, k):
            state, total = carry
            action = jax.random.uniform(k, (batch, env.action_size), minval=-1.0, maxval=1.0)
            state = jax.vmap(env.step)(state, action)
            return (state, total + state.reward), None

        init = (state, jnp.zeros((batch,), jnp.float32))
        (_, total), _ = jax.lax.scan(body, init, jax.random.split(key, n_steps))
        return total

    return run


# -- the gripper probe --------------------------------------------------------------------------
def gripper_mjcf() -> str:
    """The arm of ``brax_arm`` with gravity, a table, two finger pads and a free object.

    The hand and fingers are gravity-compensated (the mocap weld's role); pads and object are
    capsules (MJX's cheapest pairs), with friction enough to lift the object."""
    from dicp_envs import brax_arm as arm

    pad = ('<geom type="capsule" size="0.006 0.015" pos="0 0 -0.03" mass="0.05" '
           'friction="1.5"/>')
    return f"""
<mujoco model="gripper_probe">
  <option timestep="{arm.TIMESTEP}" iterations="{arm.SOLVER_ITERATIONS}"
          ls_iterations="{arm.LINESEARCH_ITERATIONS}"/>
  <worldbody>
    <geom name="table" type="plane" size="1 1 0.1" pos="0 0.6 0"/>
    <body name="hand" gravcomp="1">
      <joint name="hand_x" type="slide" axis="1 0 0" damping="{arm.HAND_DAMPING}"/>
      <joint name="hand_y" type="slide" axis="0 1 0" damping="{arm.HAND_DAMPING}"/>
      <joint name="hand_z" type="slide" axis="0 0 1" damping="{arm.HAND_DAMPING}"/>
      <geom type="sphere" size="{arm.HAND_RADIUS}" mass="{arm.HAND_MASS}" contype="0"
            conaffinity="0"/>
      <body name="left" gravcomp="1">
        <joint name="left" type="slide" axis="1 0 0" damping="2"/>
        {pad}
      </body>
      <body name="right" gravcomp="1">
        <joint name="right" type="slide" axis="1 0 0" damping="2"/>
        {pad}
      </body>
    </body>
    <body name="object">
      <freejoint/>
      <geom type="capsule" size="0.02 0.01" mass="0.05" friction="1.5"/>
    </body>
  </worldbody>
  <actuator>
    <position joint="hand_x" kp="{arm.HAND_KP}"/>
    <position joint="hand_y" kp="{arm.HAND_KP}"/>
    <position joint="hand_z" kp="{arm.HAND_KP}"/>
    <position joint="left" kp="100"/>
    <position joint="right" kp="100"/>
  </actuator>
</mujoco>"""


def gripper_run(batch: int, n_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Reset + ``n_steps`` random steps of the gripper probe: the hand target moves by
    ``0.01 a[:3]`` as in the families, ``a[3]`` sets the pads' opening; objects spread on
    the table."""
    from dicp_envs import brax_arm as arm

    sys = arm.load_system(gripper_mjcf())
    blank = arm.blank_physics(sys)
    low, high = jnp.asarray(arm.HAND_LOW), jnp.asarray(arm.HAND_HIGH)

    def reset(x: jax.Array) -> Any:
        # hand(3), pads(2), object position (3) and quaternion (4)
        q = jnp.array([*arm.HAND_INIT, -0.05, 0.05, 0.0, 0.65, 0.03, 1.0, 0.0, 0.0, 0.0])
        q = q.at[5].set(x)
        return blank.replace(qpos=q, q=q, ctrl=jnp.array([*arm.HAND_INIT, -0.05, 0.05]))

    def step(physics: Any, target: jax.Array, a: jax.Array) -> tuple[Any, jax.Array]:
        target = jnp.clip(target + arm.ACTION_SCALE * a[:3], low, high)
        opening = 0.025 * (1.0 - a[3])
        ctrl = jnp.concatenate([target, jnp.stack([-opening, opening])])
        return arm.simulate(sys, physics, ctrl, arm.N_FRAMES), target

    def run(key: jax.Array) -> jax.Array:
        physics = jax.vmap(reset)(jnp.linspace(-0.1, 0.1, batch))
        target = jnp.broadcast_to(jnp.asarray(arm.HAND_INIT), (batch, 3))

        def body(carry, k):
            physics, target, total = carry
            a = jax.random.uniform(k, (batch, 4), minval=-1.0, maxval=1.0)
            physics, target = jax.vmap(step)(physics, target, a)
            return (physics, target, total + physics.qpos[:, 7]), None

        init = (physics, target, jnp.zeros((batch,), jnp.float32))
        (_, _, total), _ = jax.lax.scan(body, init, jax.random.split(key, n_steps))
        return total

    return run


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| env | batch | steps | compile (s) | run (s) | env steps/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['batch']} | {r['steps']} | {r['compile_s']:.1f} | "
                     f"{r['run_s']:.3f} | {r['steps_per_s'] / 1e3:.1f} K |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_brax_envs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch/steps smoke run")
    parser.add_argument("--batch", type=int, default=None, help="envs stepped (default 256)")
    parser.add_argument("--steps", type=int, default=None, help="scan length (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; best is kept")
    parser.add_argument("--reacher-backends", default="mjx",
                        help="comma-separated Brax pipelines for reacher (mjx, positional, "
                             "generalized, spring; '' for none)")
    parser.add_argument("--gripper-probe", action="store_true",
                        help="also time the Pick-Place gripper probe (compiles for minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results (default {RESULTS} for full runs, none for --quick)")
    args = parser.parse_args(argv)
    batch = args.batch or (16 if args.quick else 256)
    n_steps = args.steps or (10 if args.quick else 100)
    repeats = 1 if args.quick else args.repeats

    jobs: list[tuple[str, Callable[[], Callable[[jax.Array], jax.Array]]]] = [
        (name, lambda name=name: family_run(name, batch, n_steps)) for name in FAMILIES]
    for backend in filter(None, args.reacher_backends.split(",")):
        jobs.append((f"reacher[{backend}]",
                     lambda backend=backend: reacher_run(backend, batch, n_steps)))
    if args.gripper_probe:
        jobs.append(("gripper probe (pick-place)", lambda: gripper_run(batch, n_steps)))
    rows = []
    for name, build in jobs:
        rows.append({"env": name, **time_run(build(), batch, n_steps, repeats)})
        print(f"{name}: {rows[-1]['steps_per_s']:.0f} steps/s, compile "
              f"{rows[-1]['compile_s']:.1f} s", flush=True)
    print(table(rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(other processes inflate timings)")

    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        import brax
        import mujoco

        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"quick": args.quick, "jax": jax.__version__, "brax": brax.__version__,
                "mujoco": mujoco.__version__, "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                "load_average_1m": os.getloadavg()[0], "machine": platform.processor(),
                "physics_pipeline": "mjx (brax.mjx.pipeline)"}
        out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
