"""The session-7 look-ups without a learned model: how much of DICP's result they carry.

The Darkroom experiment's planner (beam 10, depth 8, ``before_reward="explore"``,
``reward_memory``) runs on the 40 test goals of splits 0-4 with the *true* dynamics behind
the world-model interface (``dicp_jax.testing.oracle``) but no learned policy or reward: actions are
ranked in a uniformly random order and every predicted reward is 0, so only the novelty and
the recalled rewards steer. Same meta-test keys as the experiment (seed 0).

    python benchmarks/lookups_only.py [--episodes 50] [--out benchmarks/results/lookups_only.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dicp_envs
from dicp_jax import codecs
from dicp_jax.evaluate import EvalConfig, make_rollout, one_task
from dicp_jax.methods.ad import agent_from
from dicp_jax.planning.beam import BeamConfig
from dicp_jax.results import markdown, summarise
from dicp_jax.rng import task_keys
from dicp_jax.testing import oracle

RESULTS = Path(__file__).parent / "results" / "lookups_only.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--splits", default="0,1,2,3,4")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    env, _ = dicp_envs.make("darkroom")
    codec = codecs.for_env(env)
    cfg = EvalConfig(episodes=args.episodes, planner="beam", plan_start=0,
                     before_reward="explore", reward_memory=True,
                     plan=BeamConfig(beam_size=10, depth=8))

    def run(task, key):
        wm = oracle(env, task, jnp.zeros(env.num_actions), zero_reward=True)
        return one_task(make_rollout(env, agent_from(wm, codec, 80), codec, cfg,
                                     n_transit=80))(task, key)

    rollout = jax.jit(jax.vmap(run))
    returns, optimal = [], []
    for split in (int(s) for s in args.splits.split(",")):
        idx = np.asarray(dicp_envs.split_indices("darkroom", "test", seed=split))
        tasks = env.params_for(np.asarray(env.task_list())[idx])
        returns.append(np.asarray(rollout(tasks, task_keys(jax.random.PRNGKey(0), idx)).returns))
        optimal.append(np.asarray(env.optimal_return(tasks)))
    returns, optimal = np.concatenate(returns), np.concatenate(optimal)
    rows = summarise({"look-ups only": returns}, optimal)
    print(markdown(rows, "darkroom: the session-7 look-ups with true dynamics, no learned model",
                   [f"{len(optimal)} test tasks of splits {args.splits}"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"splits": args.splits, "summary": rows,
                                    "returns": returns.tolist(), "optimal": optimal.tolist()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
