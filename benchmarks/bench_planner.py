"""Planner cost and meta-test throughput.

1. Cost of planning one real step (beam search from a full real context) with the
   key/value cache versus re-running the whole context for every beam at every depth (the
   paper code's cost model, kept as ``planning.world_model.uncached``), at ``n_transit``
   80, beam 10, depth 8, paper model size, batched over the 8 Darkroom test tasks.
2. Meta-test throughput of the one-jit rollout (env steps/s over all test tasks), planner
   off (policy), on (beam), and on with the context look-ups (explore + reward memory).

Weights are random: cost does not depend on their values. Compile time is measured apart
(AOT ``lower().compile()``); runs are best of ``--repeats`` with ``block_until_ready``.

    python benchmarks/bench_planner.py [--quick]
    dicp bench planner --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dicp_envs
from dicp_jax import codecs
from dicp_jax.evaluate import EvalConfig, make_evaluate
from dicp_jax.methods.ad import agent_from
from dicp_jax.model import (
    DICPTransformer,
    ModelConfig,
    action_token,
    init_params,
    state_token,
    token_pos,
)
from dicp_jax.planning.beam import BeamConfig, beam_search
from dicp_jax.planning.world_model import cached, uncached
from dicp_jax.rng import task_keys

RESULTS = Path(__file__).resolve().parent / "results" / "planner.json"


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile seconds, best run seconds) of ``jit(fn)(*args)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return compile_s, best


def full_context(wm, codec, n_transit: int, key: jax.Array):
    """A real cache filled with ``n_transit`` random transitions, current state token last."""
    length = 2 * n_transit
    cache = wm.init_cache(length)
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.randint(k_obs, (n_transit, 2), 0, 9)
    acts = jax.random.randint(k_act, (n_transit,), 0, codec.action.n)
    for t in range(n_transit):  # host loop: set-up only, not timed
        tok = state_token(codec, obs[t], 0.0, t % 20 == 0, t)
        heads, entries = wm.decode(tok, (cache,))
        cache = wm.write(cache, entries, tok, token_pos(tok) % length)
        if t < n_transit - 1:
            tok = action_token(codec, acts[t], t)
            _, entries = wm.decode(tok, (cache,))
            cache = wm.write(cache, entries, tok, token_pos(tok) % length)
    return cache, heads.action_logits[0]


def plan_cost(model, params, codec, mcfg, plan: BeamConfig, n_tasks: int, repeats: int):
    rows = {}
    for name, wm in (("cached", cached(model, params)),
                     ("uncached", uncached(model, params))):
        cache, logits = full_context(wm, codec, mcfg.n_transit, jax.random.PRNGKey(0))
        caches = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_tasks, *x.shape)), cache)
        step = jnp.int32(mcfg.n_transit - 1)

        def plan_all(caches, logits, key, wm=wm, step=step):
            keys = jax.random.split(key, n_tasks)
            return jax.vmap(lambda c, k: beam_search(wm, codec, plan, c, logits, step,
                                                     jnp.int32(20), k))(caches, keys)

        compile_s, run_s = timed(plan_all, caches, logits, jax.random.PRNGKey(1),
                                 repeats=repeats)
        rows[name] = dict(compile_s=compile_s, ms_per_real_step=1e3 * run_s,
                          tasks=n_tasks)
    rows["speedup"] = rows["uncached"]["ms_per_real_step"] / rows["cached"]["ms_per_real_step"]
    return rows


def throughput(model, params, codec, mcfg, env, plan: BeamConfig, episodes: int,
               repeats: int):
    idx = dicp_envs.split_indices("darkroom", "test")
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(0), idx)
    rows = {}
    modes = {"policy": dict(planner="policy"), "beam": dict(planner="beam", plan=plan),
             # the Darkroom experiment's look-ups: novelty before a reward, reward memory
             "beam+explore+memory": dict(planner="beam", plan=plan, before_reward="explore",
                                         reward_memory=True)}
    for name, mode in modes.items():
        cfg = EvalConfig(episodes=episodes, plan_start=0, **mode)
        evaluate = make_evaluate(env, lambda p: agent_from(cached(model, p), codec, mcfg.n_transit),
                                 codec, cfg, mcfg.n_transit)
        t0 = time.perf_counter()
        compiled = evaluate.lower(params, tasks, keys).compile()
        compile_s = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, tasks, keys))
            best = min(best, time.perf_counter() - t0)
        n_steps = len(idx) * episodes * env.horizon
        rows[name] = dict(compile_s=compile_s, run_s=best, env_steps=n_steps,
                          env_steps_per_s=n_steps / best, tasks=len(idx), episodes=episodes)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    env, _ = dicp_envs.make("darkroom")
    codec = codecs.for_env(env)
    if args.quick:
        mcfg, plan, episodes, repeats = ModelConfig(n_transit=8, width=16, n_layers=1), \
            BeamConfig(beam_size=3, depth=2), 1, 1
    else:
        mcfg, plan, episodes, repeats = ModelConfig(n_transit=80), \
            BeamConfig(beam_size=10, depth=8), 5, args.repeats
    model = DICPTransformer(mcfg, codec)
    params = init_params(model, jax.random.PRNGKey(0))
    cost = plan_cost(model, params, codec, mcfg, plan, 8, repeats)
    thr = throughput(model, params, codec, mcfg, env, plan, episodes, repeats)
    machine = dict(platform=platform.platform(), cpus=os.cpu_count(), jax=jax.__version__,
                   device=str(jax.devices()[0]))
    result = dict(model=dict(n_transit=mcfg.n_transit, width=mcfg.width,
                             n_layers=mcfg.n_layers), plan=dict(beam_size=plan.beam_size,
                  depth=plan.depth), plan_cost=cost, meta_test=thr, machine=machine,
                  quick=args.quick)
    print(f"| planning one real step, {cost['cached']['tasks']} tasks | ms | compile s |")
    print("|---|---|---|")
    for name in ("cached", "uncached"):
        r = cost[name]
        print(f"| {name} | {r['ms_per_real_step']:.2f} | {r['compile_s']:.1f} |")
    print(f"\ncache speed-up: {cost['speedup']:.1f}x\n")
    print("| meta-test rollout | env steps/s | run s | compile s |")
    print("|---|---|---|---|")
    for name, r in thr.items():
        print(f"| {name} ({r['tasks']} tasks x {r['episodes']} episodes) | "
              f"{r['env_steps_per_s']:,.0f} | {r['run_s']:.2f} | {r['compile_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
