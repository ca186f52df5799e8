"""Source quality on Dark Key-to-Door and Darkroom-Permuted: our PPO against SB3's.

Our PPO histories on these two families end well below the optimal return. This asks
whether Stable-Baselines3's PPO does better at the same settings, on the same tasks, with
the same env: SB3 ``PPO("MlpPolicy")`` steps our jitted env (``sb3_vecenv.py``), with each
family's paper settings (``dicp_jax.sources.ppo.paper_config``: 100 streams, n_steps 50,
1,000 steps per stream = 20 episodes of 50 steps), and our learner runs the same tasks with
the same config (``dicp_jax.collect.collect``, seed 0: the dataset's histories).

Reported per task and learner: the mean over the 100 streams of each episode's return as a
fraction of the task's optimal return; summaries over the last 5 episodes.

torch and stable-baselines3 are not project dependencies; put them beside the project's
environment (as for ``sb3_gaussian.py``)::

    pip install --target /tmp/sb3pkgs --no-deps torch stable-baselines3 filelock sympy \\
        networkx mpmath
    PYTHONPATH=/tmp/sb3pkgs .venv/bin/python benchmarks/sb3_families.py [--tasks 4]

Figures go to ``benchmarks/results/sb3_families.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "sb3_families.json"
FAMILIES = ("dark_key_to_door", "darkroom_permuted")


def sb3_one_task(family: str, task: int, steps_per_stream: int, seed: int) -> dict:
    """SB3 PPO on one task (own process, one torch thread): per-episode mean return."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax
    import sb3_vecenv
    import torch

    import dicp_envs
    from dicp_jax.sources.ppo import paper_config

    torch.set_num_threads(1)
    env, _ = dicp_envs.make(family)
    cfg = paper_config(family, steps_per_stream=steps_per_stream)
    params = jax.tree.map(lambda a: a[0], env.params_for(np.asarray(env.task_list())[[task]]))
    venv = sb3_vecenv.make(env, params, cfg.n_streams, seed)
    model = sb3_vecenv.ppo(venv, cfg, seed)
    t0 = time.perf_counter()
    model.learn(total_timesteps=cfg.n_streams * steps_per_stream)
    episodes = min(len(r) for r in venv.episode_returns)
    returns = np.asarray([r[:episodes] for r in venv.episode_returns])  # [streams, episodes]
    return {"family": family, "task": task, "seed": seed,
            "mean_return": returns.mean(0).tolist(), "wall_s": time.perf_counter() - t0}


def ours(family: str, tasks: list[int], steps_per_stream: int, seed: int) -> dict:
    """Our PPO on ``tasks`` (seed 0: bit for bit the dataset's histories)."""
    import dicp_envs
    from dicp_jax.collect import collect
    from dicp_jax.sources.ppo import paper_config

    env, _ = dicp_envs.make(family)
    cfg = paper_config(family, steps_per_stream=steps_per_stream, seed=seed)
    stats: dict = {}
    _, returns = collect(env, np.asarray(tasks), cfg, stats=stats)  # [tasks, episodes]
    return {"mean_return": np.asarray(returns).tolist(), "run_s": stats["run_s"]}


def optimal(family: str, tasks: list[int]) -> list[float]:
    import dicp_envs

    env, _ = dicp_envs.make(family)
    params = env.params_for(np.asarray(env.task_list())[tasks])
    return np.asarray(env.optimal_return(params), np.float64).tolist()


def fractions(curves: list[list[float]], opt: list[float]) -> list[list[float]]:
    """Each task's per-episode returns as fractions of its optimal return."""
    return [(np.asarray(c) / o).tolist() for c, o in zip(curves, opt, strict=True)]


def summary(per_episode: list[list[float]]) -> dict:
    """Per-run last-5-episode fraction of optimal, its mean and the runs below half."""
    last5 = np.asarray([np.mean(f[-5:]) for f in per_episode])
    return {"last5_per_task": last5.round(3).tolist(), "last5_mean": float(last5.mean()),
            "below_half": int((last5 < 0.5).sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--tasks", type=int, default=4, help="train tasks per family (drawn "
                    "with numpy default_rng(2026) from the split's train tasks)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="learner seeds, each run by both learners on every task")
    ap.add_argument("--steps-per-stream", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import dicp_envs

    chosen = {f: sorted(int(t) for t in np.random.default_rng(2026).choice(
        dicp_envs.split_indices(f, "train"), args.tasks, replace=False))
        for f in args.families}
    jobs = [(f, t, args.steps_per_stream, seed) for f in args.families for seed in args.seeds
            for t in chosen[f]]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(min(args.workers, len(jobs)), maxtasksperchild=1) as pool:
        sb3 = pool.starmap(sb3_one_task, jobs)
    sb3_wall = time.perf_counter() - t0
    result: dict = {"steps_per_stream": args.steps_per_stream, "seeds": args.seeds,
                    "machine": platform.processor() or platform.machine(),
                    "sb3_wall_s": sb3_wall, "families": {}}
    for f in args.families:
        opt = optimal(f, chosen[f])
        mine = [ours(f, chosen[f], args.steps_per_stream, seed) for seed in args.seeds]
        theirs = [r for r in sb3 if r["family"] == f]  # seed-major, tasks in order
        ours_frac = [c for m in mine for c in fractions(m["mean_return"], opt)]
        sb3_frac = fractions([r["mean_return"] for r in theirs], opt * len(args.seeds))
        runs = [{"task": t, "seed": seed} for seed in args.seeds for t in chosen[f]]
        result["families"][f] = {
            "tasks": chosen[f], "optimal_return": opt, "runs": runs,
            "ours": {"fraction_per_episode": ours_frac, **summary(ours_frac),
                     "run_s": [m["run_s"] for m in mine]},
            "sb3": {"fraction_per_episode": sb3_frac, **summary(sb3_frac),
                    "wall_s": [r["wall_s"] for r in theirs]}}
        for name in ("ours", "sb3"):
            got = result["families"][f][name]
            print(f"{f} {name}: last 5 episodes at {got['last5_mean']:.3f} of optimal "
                  f"(mean of {len(runs)} runs), {got['below_half']} runs below half")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
