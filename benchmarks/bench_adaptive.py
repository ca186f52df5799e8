"""Adaptive planning (beyond the paper) against the paper's fixed planning, same checkpoint.

The paper plans at every step once the planner is in charge. ``EvalConfig.plan_confidence``
lets the planner act only where the policy's top action has probability below a threshold;
elsewhere the policy acts and, thanks to the rollout's planning slot
(``evaluate.make_act``), no search runs at all. This script meta-tests one trained run
with the experiment row's planner settings, fixed and at several thresholds, over several
evaluation seeds, and reports per setting:

- returns per episode band (mean and standard error over task x seed runs);
- the share of real steps the planner acted on;
- multiply-adds per action: ``share x (policy + search) + (1 - share) x policy``, counted by
  ``dicp_jax.flops`` in the unit of the paper's Table 7;
- wall seconds of the meta-test (compile excluded: the first seed's call is timed apart).

    python benchmarks/bench_adaptive.py [--exp darkroom --row "DICP (paper's planner)"]
        [--split 0] [--thresholds 0.5 0.7 0.9] [--seeds 0 1 2]
    dicp bench adaptive ...

The run must exist (``make train`` trains it); the figures go to ``--out`` (default
``benchmarks/results/adaptive_<exp>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BANDS = ((1, 5), (6, 10), (11, 25), (26, 50))


def band_stats(returns: np.ndarray) -> dict[str, list[float]]:
    """{"1-5": [mean, se], ...} of per-run band means; ``returns`` [runs, episodes]."""
    out = {}
    for lo, hi in BANDS:
        if hi > returns.shape[1]:
            continue
        per_run = returns[:, lo - 1:hi].mean(1)
        out[f"{lo}-{hi}"] = [float(per_run.mean()),
                             float(per_run.std(ddof=1) / np.sqrt(len(per_run)))]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", default="darkroom")
    ap.add_argument("--row", default="DICP (paper's planner)")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default benchmarks/results/adaptive_<exp>.json)")
    args = ap.parse_args(argv)

    import jax

    import dicp_envs
    from dicp_jax import codecs
    from dicp_jax import experiment as explib
    from dicp_jax.evaluate import evaluate_run
    from dicp_jax.flops import macs_per_action
    from dicp_jax.train import load_trained

    exp = explib.load_experiment(args.exp)
    run_dir = explib.EXPERIMENTS / "results" / exp.name / "runs" / f"split{args.split}"
    if not run_dir.is_dir():
        raise SystemExit(f"no trained run in {run_dir}: run `make train EXP={exp.name}` first")
    base = explib.stage_configs(exp, splits_seed=args.split)["eval"][args.row]
    trained = load_trained(run_dir)
    env = dicp_envs.make(exp.env)[0]
    tasks = np.asarray(dicp_envs.split_indices(exp.env, "test", seed=args.split))
    optimal = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[tasks])))
    n_actions = int(codecs.for_env(env).action.n)
    method, model_cfg = trained.train_cfg.method, trained.model_cfg
    policy_macs = macs_per_action(method, model_cfg, n_actions)
    search_macs = macs_per_action(method, model_cfg, n_actions, base.plan)

    settings = [("fixed (the paper)", base)] + [
        (f"adaptive, confidence < {t:g}", dataclasses.replace(base, plan_confidence=t))
        for t in args.thresholds]
    rows = []
    for label, cfg in settings:
        returns, planned, run_s, compile_s = [], [], 0.0, 0.0
        for i, seed in enumerate(args.seeds):
            t0 = time.perf_counter()
            out = evaluate_run(trained, tasks, cfg, seed=seed)
            took = time.perf_counter() - t0
            if i == 0:
                compile_s = took  # first call: compile + run
            else:
                run_s += took
            returns.append(np.asarray(out.returns))
            planned.append(np.asarray(out.planned))
        returns, planned = np.concatenate(returns), np.concatenate(planned)
        share = float(planned.sum() / planned.size / env.horizon)
        macs = macs_per_action(method, model_cfg, n_actions, base.plan, share)
        per_seed_s = run_s / max(1, len(args.seeds) - 1)
        row = {"setting": label, "plan_confidence": cfg.plan_confidence,
               "bands": band_stats(returns),
               "late_fraction_of_optimal": float(
                   (returns[:, 25:] / np.tile(optimal, len(args.seeds))[:, None]).mean()),
               "planned_share": share, "macs_per_action": macs,
               "run_s_per_seed": per_seed_s, "first_call_s": compile_s}
        rows.append(row)
        print(json.dumps(row), flush=True)

    fixed = rows[0]
    print(f"\n{exp.name} split {args.split}, row {args.row!r}, {len(tasks)} test tasks x "
          f"{len(args.seeds)} seeds, {jax.device_count()} devices\n")
    cols = [f"ep {b}" for b in fixed["bands"]]
    print("| setting | " + " | ".join(cols) + " | planned | MACs/action | vs fixed | s/seed |")
    print("|---" * (len(cols) + 5) + "|")
    for r in rows:
        bands = " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in r["bands"].values())
        print(f"| {r['setting']} | {bands} | {100 * r['planned_share']:.0f}% | "
              f"{r['macs_per_action'] / 1e6:.1f}M | "
              f"{r['macs_per_action'] / fixed['macs_per_action']:.2f}x | "
              f"{r['run_s_per_seed']:.1f} |")
    result = {"exp": exp.name, "split": args.split, "row": args.row, "seeds": args.seeds,
              "tasks": tasks.tolist(), "machine": platform.processor() or platform.machine(),
              "devices": jax.device_count(), "policy_macs": policy_macs,
              "search_macs": search_macs, "rows": rows}
    out = args.out or RESULTS / f"adaptive_{exp.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")



if __name__ == "__main__":
    main()
