"""``dicp eval``: meta-test a trained run on held-out tasks, planner on or off.

The run, every setting, the output file and the env's support for the settings are
checked before the (long) meta-test starts; flags win over ``--set`` of the same field.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dicp_jax.commands.common import (
    UsageError,
    check_out_file,
    checkpoint_steps,
    load_run,
    positive,
    print_config,
    read_run,
    warn,
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `dicp train`")
    p.add_argument("--planner", default="beam",
                   help="a registered planner (dicp list planners); beam: DICP (plan with "
                        "the world model), policy: AD")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--depth", type=int, default=None, help="default: the paper's, per env")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--split", choices=("test", "train", "all"), default="test")
    p.add_argument("--tasks", type=int, default=None, metavar="N",
                   help="meta-test only the first N tasks of the split")
    p.add_argument("--greedy", action="store_true", help="argmax actions / rank by probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="any EvalConfig field or field of the planner's config "
                        "(see --dry-run for all)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for per-task returns")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config as JSON and exit")


def resolve(args: argparse.Namespace) -> dict:
    """Run record, EvalConfig and task indices, every one checked; nothing loaded yet."""
    import dicp_envs
    from dicp_jax import config as cfglib
    from dicp_jax import stages

    positive("--tasks", args.tasks)
    run_dir = Path(args.run)
    saved = read_run(run_dir)
    env_name = saved["env_name"]
    stages.check_env_name(env_name)
    env, _ = dicp_envs.make(env_name)
    sets = cfglib.parse_sets(args.set)
    flags = {"depth": args.depth, "beam_size": args.beam_size, "episodes": args.episodes,
             "greedy": True if args.greedy else None}
    overrides = {**sets, **{k: v for k, v in flags.items() if v is not None}}
    if "depth" in stages.eval_keys(args.planner)[1]:
        overrides.setdefault("depth", dicp_envs.family(env_name).plan_depth)
    cfg = stages.eval_config(env_name, overrides, planner=args.planner)
    split_seed = saved["train"].get("split_seed")
    idx = dicp_envs.split_indices(env_name, args.split, seed=split_seed)
    if args.tasks is not None:
        if args.tasks > len(idx):
            raise UsageError(f"--tasks {args.tasks}: the {args.split} split of {env_name} has "
                             f"only {len(idx)} tasks")
        idx = idx[:args.tasks]
    check_out_file("--out", args.out)
    if not checkpoint_steps(run_dir):
        raise UsageError(f"{run_dir} has no checkpoint yet (train it, or --resume its "
                         "training)")
    warnings = stages.eval_warnings(cfg, env.horizon, int(saved["model"]["n_transit"]))
    return {"run": run_dir, "env": env_name, "split": args.split, "split_seed": split_seed,
            "task_index": idx, "seed": args.seed, "eval": cfg, "warnings": warnings}


def run(args: argparse.Namespace) -> int:
    r = resolve(args)
    for message in r["warnings"]:
        warn("eval", message)
    cfg, idx = r["eval"], r["task_index"]
    if args.dry_run:
        shown = {k: v for k, v in r.items() if k not in ("warnings", "task_index")}
        return print_config("eval", {**shown, "task_index": [int(i) for i in idx]})
    import numpy as np

    import dicp_envs
    from dicp_jax import config as cfglib
    from dicp_jax.distributed import is_main
    from dicp_jax.evaluate import evaluate_run
    from dicp_jax.results import markdown, summarise

    main = is_main()  # in a multi-process run process 0 alone prints and writes
    print_ = print if main else (lambda *a, **k: None)
    trained = load_run(r["run"])
    env, _ = dicp_envs.make(trained.env_name)
    method = trained.train_cfg.method.upper()  # the row is the run's method, planned or not
    label = {"beam": f"DICP-{method}", "policy": method}.get(cfg.planner,
                                                            f"{method} + {cfg.planner}")
    how = ", ".join([f"planner {cfg.planner}"]
                    + [f"{k} {v}" for k, v in cfglib.to_dict(cfg.plan).items()])
    print_(f"meta-testing {label} ({how}) on {len(idx)} {args.split} tasks x {cfg.episodes} "
           f"episodes of {env.horizon} steps, seed {args.seed}", flush=True)
    print_("compiling the meta-test (one time) and running it ...", flush=True)
    t0 = time.perf_counter()
    out = evaluate_run(trained, idx, cfg, seed=args.seed)
    secs = time.perf_counter() - t0
    print_(f"meta-test done in {secs:.1f} s (including compilation)", flush=True)
    returns = np.asarray(out.returns)
    optimal = (np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[idx])))
               if env.has_oracle else None)
    success = None if out.success is None else {label: np.asarray(out.success)}
    planned = None if out.planned is None else np.asarray(out.planned)
    notes = [f"{len(idx)} {args.split} tasks; {secs:.1f} s including compilation"]
    if planned is not None and cfg.planner != "policy":
        share = float(planned.sum() / planned.size / env.horizon)
        notes.append(f"the planner acted on {share:.0%} of real steps")
        notes += _macs_note(trained, cfg, share)
    print_(markdown(summarise({label: returns}, optimal, success),
                    f"{trained.env_name}: {args.run}", notes))
    if args.out and main:
        args.out.write_text(json.dumps({
            "run": str(args.run), "planner": args.planner, "task_index": idx.tolist(),
            "returns": returns.tolist(),
            "optimal": None if optimal is None else optimal.tolist(),
            "success": None if success is None else success[label].tolist(),
            "planned": None if planned is None else planned.tolist(),
            "config": cfglib.to_dict(cfg)}, indent=1))
        print_(f"wrote {args.out}")
    return 0


def _macs_note(trained, cfg, share: float) -> list[str]:
    """Multiply-adds per action as executed (``dicp_jax.flops``, Table 7's unit), where a
    cost model covers the run's method and the planner (discrete actions, beam search)."""
    from dicp_jax.flops import macs_per_action

    n_actions = getattr(trained.codec.action, "n", None)
    if cfg.planner != "beam" or n_actions is None:
        return []
    method, model_cfg = trained.train_cfg.method, trained.model_cfg
    try:
        search = macs_per_action(method, model_cfg, int(n_actions), cfg.plan)
        policy = macs_per_action(method, model_cfg, int(n_actions))
    except ValueError:  # no cost model for this method
        return []
    mean = macs_per_action(method, model_cfg, int(n_actions), cfg.plan, share)
    return [f"multiply-adds per action: {mean / 1e6:.3g}M on average ({search / 1e6:.3g}M on "
            f"a searched step, {policy / 1e6:.3g}M on a policy step)"]
