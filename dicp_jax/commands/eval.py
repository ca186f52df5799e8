"""``dicp eval``: meta-test a trained run on held-out tasks, planner on or off."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `dicp train`")
    p.add_argument("--planner", choices=("beam", "policy"), default="beam")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--depth", type=int, default=None, help="default: the paper's, per env")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--split", choices=("test", "train", "all"), default="test")
    p.add_argument("--greedy", action="store_true", help="argmax actions / rank by probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="any EvalConfig or PlanConfig field")
    p.add_argument("--out", type=Path, default=None, help="JSON file for per-task returns")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import dicp_envs
    from dicp_jax import config as cfglib
    from dicp_jax.evaluate import EvalConfig, evaluate_run, paper_depth
    from dicp_jax.planner import PlanConfig
    from dicp_jax.results import markdown, summarise
    from dicp_jax.train import load_trained

    sets = cfglib.parse_sets(args.set)
    plan_keys = {f.name for f in dataclasses.fields(PlanConfig)}
    trained = load_trained(args.run)
    env, _ = dicp_envs.make(trained.env_name)
    plan_over = {k: v for k, v in sets.items() if k in plan_keys}
    plan_over.setdefault("depth", args.depth or paper_depth(env))
    if args.beam_size is not None:
        plan_over["beam_size"] = args.beam_size
    if args.greedy:
        plan_over["greedy"] = True
    eval_over = {k: v for k, v in sets.items() if k not in plan_keys}
    eval_over["planner"] = args.planner
    eval_over["greedy"] = args.greedy
    if args.episodes is not None:
        eval_over["episodes"] = args.episodes
    cfg = dataclasses.replace(cfglib.replace(EvalConfig(), **eval_over),
                              plan=cfglib.replace(PlanConfig(), **plan_over))
    split_seed = trained.train_cfg.split_seed
    idx = dicp_envs.split_indices(trained.env_name, args.split, seed=split_seed)
    print(f"meta-testing {len(idx)} {args.split} tasks x {cfg.episodes} episodes "
          f"({args.planner}) ...", flush=True)
    t0 = time.perf_counter()
    out = evaluate_run(trained, idx, cfg, seed=args.seed)
    secs = time.perf_counter() - t0
    returns = np.asarray(out.returns)
    optimal = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[idx])))
    label = "DICP" if args.planner == "beam" else "AD"
    print(markdown(summarise({label: returns}, optimal), f"{trained.env_name}: {args.run}",
                   [f"{len(idx)} {args.split} tasks; {secs:.1f} s including compilation"]))
    if args.out:
        args.out.write_text(json.dumps({
            "run": str(args.run), "planner": args.planner, "task_index": idx.tolist(),
            "returns": returns.tolist(), "optimal": optimal.tolist(),
            "config": cfglib.to_dict(cfg)}, indent=1))
    return 0
