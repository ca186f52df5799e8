"""Continuous meta-test throughput: the one-jit Brax Reach rollout, planner off and on.

The env, the Transformer (continuous codec, key/value cache) and the ``sampled`` planner
(the paper's Alg. 3: the policy mean plus L - 1 samples scored by predicted reward) run as
one jitted program vmapped over test tasks; env steps/s over all tasks, planner off
(``policy``) and on (``sampled``, L = 10, depth 1, at every step and, as the paper's code,
only in the last 49 steps of each 100-step episode). Random weights: cost does not depend
on their values. Compile time apart (AOT), runs best of ``--repeats``.

    python benchmarks/bench_continuous.py [--quick] [--n-transit N]
    dicp bench continuous
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "continuous.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    ap.add_argument("--n-transit", type=int, default=200,
                    help="context in transitions (the paper's: 1000 = 10 episodes)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import dicp_envs
    from dicp_jax import codecs
    from dicp_jax.evaluate import EvalConfig, make_evaluate
    from dicp_jax.methods.ad import agent_from
    from dicp_jax.model import DICPTransformer, ModelConfig, init_params
    from dicp_jax.planning.sampled import SampledConfig
    from dicp_jax.planning.world_model import cached
    from dicp_jax.rng import task_keys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_planner import timed  # compile apart (AOT), then the best of the repeats

    env, _ = dicp_envs.make("reach")
    codec = codecs.for_env(env)
    n_transit = 20 if args.quick else args.n_transit
    # the paper's continuous model size (width 64, 4 layers, 8 heads, MLP 256)
    mcfg = ModelConfig(n_transit=n_transit, width=64, n_layers=4, n_heads=8, mlp=256)
    model = DICPTransformer(mcfg, codec)
    params = init_params(model, jax.random.PRNGKey(0))
    n_tasks = 2 if args.quick else 8
    idx = dicp_envs.split_indices("reach", "test")[:n_tasks]
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(0), idx)
    episodes = 1 if args.quick else 2
    modes = {"policy": dict(planner="policy"),
             "sampled, every step": dict(planner="sampled",
                                         plan=SampledConfig(plan_last_steps=None)),
             "sampled, last 49 steps (paper's code)": dict(planner="sampled",
                                                           plan=SampledConfig())}
    rows = {}
    for name, mode in modes.items():
        cfg = EvalConfig(episodes=episodes, plan_start=0, **mode)
        evaluate = make_evaluate(env, lambda p: agent_from(cached(model, p), codec, n_transit),
                                 codec, cfg, n_transit)
        compile_s, best = timed(evaluate, params, tasks, keys,
                                repeats=1 if args.quick else args.repeats)
        n = len(idx) * episodes * env.horizon
        rows[name] = dict(env_steps_per_s=n / best, run_s=best, compile_s=compile_s,
                          env_steps=n)
    print(f"\n| Reach meta-test, {n_tasks} tasks x {episodes} episodes, n_transit {n_transit} "
          "| env steps/s | run s | compile s |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['env_steps_per_s']:,.0f} | {r['run_s']:.2f} | "
              f"{r['compile_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        n_transit=n_transit, tasks=n_tasks, episodes=episodes, rows=rows, quick=args.quick,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), jax=jax.__version__,
                     devices=len(jax.devices()))), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
