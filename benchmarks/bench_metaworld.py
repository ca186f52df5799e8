"""Real Meta-World on the host: env steps/s per core, and where a meta-test step's time goes.

Needs the ``metaworld`` extra (run it with the Meta-World venv, e.g.
``.venv-mw/bin/python benchmarks/bench_metaworld.py``).

1. ``envs``: ``HostBatch`` of ``--envs`` reach-v3 envs (tasks cycled over ML1's train tasks)
   stepped with uniform random actions for ``--steps`` steps, resets every 100 steps
   included, in this process (``workers=0``: one core) and with ``--workers`` processes.
   Also the construction time per env (one compiled MuJoCo model, copied per env).
2. ``meta-test``: ``dicp_jax.host.evaluate.evaluate_host`` on ``--tasks`` ML1 test tasks
   for ``--episodes`` episodes with an untrained AD model (the step's cost does not
   depend on the weights) of the ``--preset`` sizes: the seconds in the jitted agent step
   (one call per env step for all tasks, compile excluded) against the seconds in the
   envs, for AD (policy) and DICP (the sampled planner, planning from step 0 in the last
   49 steps of each episode as the paper's code).

    python benchmarks/bench_metaworld.py [--quick] [--envs 50] [--steps 200] [--workers 2]
        [--tasks 50] [--episodes 2] [--preset cpu|paper] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "metaworld.json"
ENV = "metaworld/reach-v3"
# model sizes: the reduced experiment's and the paper's (experiments/metaworld_reach*.json)
PRESETS = {"cpu": dict(n_transit=200, width=32, n_layers=4, n_heads=4, mlp=128),
           "paper": dict(n_transit=1000, width=64, n_layers=4, n_heads=8, mlp=256)}


def bench_envs(n_envs: int, n_steps: int, workers: int) -> dict:
    import dicp_envs

    env = dicp_envs.make(ENV)[0]
    index = np.arange(n_envs) % 50
    t0 = time.perf_counter()
    batch = env.batch(index, 1, workers)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    with batch:
        batch.reset()
        t0 = time.perf_counter()
        for t in range(n_steps):
            batch.step(rng.uniform(-1, 1, (n_envs, 4)))
            if (t + 1) % env.horizon == 0:
                batch.reset()
        secs = time.perf_counter() - t0
    rate = n_envs * n_steps / secs
    return {"envs": n_envs, "workers": workers, "steps": n_steps, "seconds": secs,
            "steps_per_s": rate, "steps_per_s_per_core": rate / max(workers, 1),
            "build_s_per_env": build_s / n_envs}


def bench_meta_test(n_tasks: int, episodes: int, preset: str, workers: int) -> list[dict]:
    import jax

    import dicp_envs
    from dicp_jax import codecs, methods
    from dicp_jax.host.evaluate import evaluate_host
    from dicp_jax.model import ModelConfig
    from dicp_jax.stages import eval_config
    from dicp_jax.train import PRESETS as TRAIN_PRESETS
    from dicp_jax.train import TrainedModel

    env = dicp_envs.make(ENV)[0]
    codec = codecs.for_env(env, codecs.config_type(env)())
    model_cfg = ModelConfig(**PRESETS[preset], dropout=0.0, attn_dropout=0.0)
    method = methods.get("ad")
    model = method.make_model(model_cfg, codec)
    params = method.init_params(model, jax.random.PRNGKey(0))
    trained = TrainedModel(model, params, model_cfg, TRAIN_PRESETS["cpu"], ENV, codec)
    test = dicp_envs.split_indices(ENV, "test")[:n_tasks]
    rows = []
    for label, planner, settings in (("AD", "policy", {}),
                                     ("DICP", "sampled", {"plan_start": 0})):
        cfg = eval_config(ENV, {"episodes": episodes, **settings}, planner)
        stats: dict = {}
        t0 = time.perf_counter()
        evaluate_host(trained, env, test, cfg, workers=workers, stats=stats)
        wall = time.perf_counter() - t0
        steady = stats["model_s"] + stats["env_s"]
        rows.append({"row": label, "planner": planner, "tasks": len(test),
                     "episodes": episodes, "preset": preset, "workers": workers,
                     "wall_s": wall, "compile_s": stats["compile_s"],
                     "model_s": stats["model_s"], "env_s": stats["env_s"],
                     "model_share": stats["model_s"] / steady,
                     "model_ms_per_step": 1e3 * stats["model_s"] / (stats["model_steps"] - 2),
                     "env_steps_per_s": stats["env_steps"] / stats["env_s"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 envs, 100 steps, 10 tasks, 1 ep")
    p.add_argument("--envs", type=int, default=50)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--skip-meta-test", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.quick:
        a.envs, a.steps, a.tasks, a.episodes = 10, 100, 10, 1
    out = {"machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                       "load_average": os.getloadavg()[0]},
           "envs": [bench_envs(a.envs, a.steps, 0), bench_envs(a.envs, a.steps, a.workers)]}
    for r in out["envs"]:
        print(f"envs: {r['envs']} reach-v3 envs, workers {r['workers']}: "
              f"{r['steps_per_s']:,.0f} steps/s ({r['steps_per_s_per_core']:,.0f} per core), "
              f"build {1e3 * r['build_s_per_env']:.0f} ms/env")
    if not a.skip_meta_test:
        out["meta_test"] = bench_meta_test(a.tasks, a.episodes, a.preset, a.workers)
        for r in out["meta_test"]:
            print(f"meta-test {r['row']} ({r['preset']} model, {r['tasks']} tasks x "
                  f"{r['episodes']} episodes, workers {r['workers']}): model step "
                  f"{r['model_ms_per_step']:.1f} ms ({r['model_share']:.0%} of the steady "
                  f"time), envs {r['env_steps_per_s']:,.0f} steps/s, compile "
                  f"{r['compile_s']:.1f} s, wall {r['wall_s']:.1f} s")
    out["machine"]["load_average_end"] = os.getloadavg()[0]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
