"""Gaussian PPO collection against Stable-Baselines3's PPO on the same Brax Reach tasks.

Both learners run the paper's Meta-World settings (SB3 ``MlpPolicy`` for Box actions:
n_steps 100, batch 200, 20 epochs, lr 3e-4, 100 streams per task, gamma 0.99, GAE 0.95,
clip 0.2, no entropy bonus) for the same env steps per task, on the same tasks, in one run
on the same machine, using all of it:

- ours: ``dicp_jax.collect.collect`` of ``--tasks`` Reach tasks over this process's CPU
  devices (one per core, as the ``dicp`` CLI sets them), compile timed apart;
- SB3: one process per task (as many at a time as cores), one torch thread each, stepping
  the *same* jitted Brax Reach env: 100 streams as one vmapped call per vector step
  (``JaxVecEnv``), so SB3 pays for its learner, not for a slow env. SB3 sees the true last
  observation of a time-limit step (``terminal_observation``), so it bootstraps as ours
  (``sb3_vecenv.py``).

Reported: env steps/s of each (all tasks' steps over wall time) and their ratio.

torch and stable-baselines3 are not project dependencies; put them beside the project's
environment without touching it (the wheel names are examples)::

    pip install --target /tmp/sb3pkgs --no-deps torch stable-baselines3 filelock sympy \\
        networkx mpmath
    PYTHONPATH=/tmp/sb3pkgs .venv/bin/python benchmarks/sb3_gaussian.py [--tasks 2]
        [--steps-per-stream 1000]

Figures go to ``benchmarks/results/sb3_gaussian.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sb3_gaussian.json"
ENV = "reach"


def sb3_one_task(task: int, steps_per_stream: int, seed: int) -> dict:
    """SB3 PPO on one Reach task (own process, one torch thread); wall seconds of learn()."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax
    import numpy as np
    import sb3_vecenv
    import torch

    import dicp_envs
    from dicp_jax.sources.gaussian_ppo import paper_config

    torch.set_num_threads(1)
    env, _ = dicp_envs.make(ENV)
    cfg = paper_config(ENV, steps_per_stream=steps_per_stream)
    params = jax.tree.map(lambda a: a[0], env.params_for(np.asarray(env.task_list())[[task]]))
    n = cfg.n_streams
    venv = sb3_vecenv.make(env, params, n, seed)
    model = sb3_vecenv.ppo(venv, cfg, seed)
    venv.reset()
    venv.step_async(np.zeros((n, int(env.action_dim)), np.float32))
    venv.step_wait()  # compile the env outside the clock
    steps = n * steps_per_stream
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return {"task": task, "env_steps": steps, "wall_s": time.perf_counter() - t0}


def ours(tasks: list[int], steps_per_stream: int) -> dict:
    import jax

    import dicp_envs
    from dicp_jax.collect import collect
    from dicp_jax.sources.gaussian_ppo import paper_config

    env, _ = dicp_envs.make(ENV)
    cfg = paper_config(ENV, steps_per_stream=steps_per_stream)
    stats: dict = {}
    collect(env, tasks, cfg, stats=stats)
    return {"devices": jax.device_count(), "env_steps": stats["env_steps"],
            "compile_s": stats["compile_s"], "run_s": stats["run_s"],
            "steps_per_s": stats["env_steps"] / stats["run_s"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--steps-per-stream", type=int, default=1000)
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={cores}")

    import dicp_envs

    tasks = [int(i) for i in dicp_envs.split_indices(ENV, "train")[:args.tasks]]
    ctx = mp.get_context("spawn")  # a fresh interpreter per SB3 learner: its own XLA flags
    t0 = time.perf_counter()
    with ctx.Pool(min(cores, len(tasks))) as pool:  # one learner per core at a time
        sb3 = pool.starmap(sb3_one_task, [(t, args.steps_per_stream, 0) for t in tasks])
    sb3_wall = time.perf_counter() - t0
    sb3_steps = sum(r["env_steps"] for r in sb3)
    mine = ours(tasks, args.steps_per_stream)
    # SB3's figure counts learn() only, like ours without its compile: the learners' summed
    # learn() seconds spread over the processes running at once. The pool's wall time
    # (process start, env compile) is kept beside it.
    at_once = min(cores, len(tasks))
    sb3_rate = sb3_steps / (sum(r["wall_s"] for r in sb3) / at_once)
    result = {"env": ENV, "tasks": tasks, "steps_per_stream": args.steps_per_stream,
              "cores": cores, "machine": platform.processor() or platform.machine(),
              "ours": mine, "sb3": {"per_task": sb3, "pool_wall_s": sb3_wall,
                                    "steps_per_s": sb3_rate},
              "ratio": mine["steps_per_s"] / sb3_rate}
    print(json.dumps(result, indent=1))
    print(f"\nours {mine['steps_per_s']:,.0f} env steps/s, SB3 {sb3_rate:,.0f}: "
          f"{result['ratio']:.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
