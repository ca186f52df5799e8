"""This tree against an earlier revision, side by side in one run: training and planning speed.

The speed targets of the long-context work are ratios to "today's" code, and machines of
this kind differ by 2-3x, so both sides are measured here, one after the other on the same
machine: the earlier revision is checked out as a git worktree and the same measurements
run in a subprocess against its ``dicp_jax`` (``PYTHONPATH``), then against this tree's.
Only the library differs; the measuring code is this file, for both.

Measured (random weights and synthetic histories: cost does not depend on their values):

- training: tokens/s of the real jitted train call (window sampling, forward, backward,
  AdamW) on the ``cpu`` preset at ``n_transit`` 80 (Darkroom) and 200 (Key-to-Door,
  Permuted), with this run's float32 matmul peak and the analytic model FLOPs (matmuls over
  the full masked window, backward = 2 x forward) as a fraction of it;
- planning: milliseconds per planned real step (beam 10, the paper's depth: 8 at
  ``n_transit`` 80, 16 at 200) from a full context, 8 tasks batched, and the actions chosen
  (the same algorithm must choose the same actions);
- meta-test: env steps/s of the one-jit Key-to-Door rollout with the paper's planner
  (beam 10, depth 16) and without (policy), 8 test tasks.

    python benchmarks/bench_speedup.py --against f22ffe5 [--quick]
    dicp bench speedup --against f22ffe5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
RESULTS = HERE.parent / "results" / "speedup.json"


# -- measurements (run in a worker process against whichever dicp_jax it imports) -------------
def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_row(n_transit: int, calls: int, steps_per_call: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from dicp_jax import config as cfglib
    from dicp_jax.data import prepare, to_device
    from dicp_jax.testing import synthetic_history
    from dicp_jax.train import preset_configs

    mesh = Mesh(np.array(jax.devices()), ("data",))
    train_cfg, model_cfg = preset_configs("darkroom", "cpu")
    model_cfg = cfglib.replace(model_cfg, n_transit=n_transit)
    train_cfg = cfglib.replace(train_cfg, steps_per_call=steps_per_call)
    seq = train_cfg.sequence_length(model_cfg)
    hist = synthetic_history("darkroom", np.arange(0, 81, 5), 4, max(1000, 2 * seq),
                             jax.random.PRNGKey(0))
    data = to_device(prepare(hist, mesh.size), mesh)
    sys.path.insert(0, str(HERE.parent))
    from bench_train import bench_config  # the train call timed as bench_train times it

    row = bench_config(f"n_transit {n_transit}", train_cfg, model_cfg, data, mesh, calls)
    return dict(n_transit=n_transit, batch=train_cfg.batch_size,
                tokens_per_step=train_cfg.batch_size * 2 * seq,
                steps_per_s=row["steps_per_s"], tokens_per_s=row["tokens_per_s"],
                model_flops_per_s=row["flops_per_s"],
                compile_plus_first_call_s=row["compile_plus_first_call_s"], loss=row["loss"])


def plan_row(n_transit: int, depth: int, repeats: int, n_tasks: int = 8) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from bench_planner import full_context, timed

    from dicp_jax import codecs
    from dicp_jax.model import DICPTransformer, ModelConfig, init_params
    from dicp_jax.planning.beam import BeamConfig, beam_search
    from dicp_jax.planning.world_model import cached

    codec = codecs.for_name("darkroom")
    mcfg = ModelConfig(n_transit=n_transit)
    model = DICPTransformer(mcfg, codec)
    wm = cached(model, init_params(model, jax.random.PRNGKey(0)))
    plan = BeamConfig(beam_size=10, depth=depth)
    cache, logits = full_context(wm, codec, n_transit, jax.random.PRNGKey(0))
    caches = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_tasks, *x.shape)), cache)
    step = jnp.int32(n_transit - 1)

    def plan_all(caches, key):
        keys = jax.random.split(key, n_tasks)
        return jax.vmap(lambda c, k: beam_search(wm, codec, plan, c, logits, step,
                                                 jnp.int32(depth), k))(caches, keys)

    compile_s, best = timed(plan_all, caches, jax.random.PRNGKey(1), repeats=repeats)
    actions = np.asarray(jax.jit(plan_all)(caches, jax.random.PRNGKey(1))).tolist()
    return dict(n_transit=n_transit, depth=depth, beam=10, tasks=n_tasks,
                ms_per_planned_step=1e3 * best, compile_s=compile_s, actions=actions)


def meta_test_rows(episodes: int, repeats: int) -> dict:
    import jax
    import numpy as np

    import dicp_envs
    from dicp_jax import codecs
    from dicp_jax.evaluate import EvalConfig, make_evaluate
    from dicp_jax.methods.ad import agent_from
    from dicp_jax.model import DICPTransformer, ModelConfig, init_params
    from dicp_jax.planning.beam import BeamConfig
    from dicp_jax.planning.world_model import cached
    from dicp_jax.rng import task_keys

    sys.path.insert(0, str(HERE.parent))
    from bench_planner import timed

    env, _ = dicp_envs.make("dark_key_to_door")
    codec = codecs.for_env(env)
    mcfg = ModelConfig(n_transit=200)
    model = DICPTransformer(mcfg, codec)
    params = init_params(model, jax.random.PRNGKey(0))
    idx = dicp_envs.split_indices("dark_key_to_door", "test")[:8]
    tasks = env.params_for(np.asarray(env.task_list())[idx])
    keys = task_keys(jax.random.PRNGKey(0), idx)
    rows = {}
    for name, mode in (("policy", dict(planner="policy")),
                       ("beam 10, depth 16", dict(planner="beam",
                                                  plan=BeamConfig(beam_size=10, depth=16)))):
        cfg = EvalConfig(episodes=episodes, plan_start=0, **mode)
        evaluate = make_evaluate(env, lambda p: agent_from(cached(model, p), codec, 200),
                                 codec, cfg, 200)
        compile_s, best = timed(evaluate, params, tasks, keys, repeats=repeats)
        n = len(idx) * episodes * env.horizon
        rows[name] = dict(env_steps_per_s=n / best, run_s=best, compile_s=compile_s,
                          env_steps=n)
    return rows


def worker(quick: bool) -> dict:
    import jax

    import dicp_jax

    reps = 1 if quick else 3
    return dict(
        library=str(Path(dicp_jax.__file__).resolve().parent),
        devices=len(jax.devices()), matmul_peak_flops_per_s=matmul_peak(),
        train=[train_row(n, calls=reps, steps_per_call=2 if quick else 5) for n in (80, 200)],
        plan=[plan_row(80, 8, reps), plan_row(200, 16, reps)],
        meta_test=meta_test_rows(1 if quick else 2, reps))


# -- driver ---------------------------------------------------------------------------------
def measure(tree: Path, quick: bool) -> dict:
    """Run ``worker`` in a subprocess importing ``dicp_jax`` from ``tree``."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(HERE), "--worker", "--out", str(out)] + (["--quick"] * quick)
    subprocess.run(cmd, env=env, cwd=tree, check=True)
    return json.loads(out.read_text())


def worktree(rev: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"dicp-bench-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                       check=True, capture_output=True)
    return path


def report(old: dict, new: dict, rev: str) -> None:
    print(f"\nfloat32 matmul peak: {old['matmul_peak_flops_per_s'] / 1e9:.1f} ({rev}) and "
          f"{new['matmul_peak_flops_per_s'] / 1e9:.1f} (this tree) GFLOP/s, "
          f"{new['devices']} devices\n")
    print(f"| training, cpu preset | {rev} tokens/s | this tree tokens/s | ratio | "
          "model FLOPs of peak (this tree) |")
    print("|---|---|---|---|---|")
    for a, b in zip(old["train"], new["train"], strict=True):
        print(f"| n_transit {a['n_transit']} | {a['tokens_per_s']:,.0f} | "
              f"{b['tokens_per_s']:,.0f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x | "
              f"{b['model_flops_per_s'] / new['matmul_peak_flops_per_s']:.1%} |")
    print(f"\n| planning one real step, 8 tasks | {rev} ms | this tree ms | ratio | "
          "same actions |")
    print("|---|---|---|---|---|")
    for a, b in zip(old["plan"], new["plan"], strict=True):
        print(f"| n_transit {a['n_transit']}, beam 10, depth {a['depth']} | "
              f"{a['ms_per_planned_step']:.1f} | {b['ms_per_planned_step']:.1f} | "
              f"{a['ms_per_planned_step'] / b['ms_per_planned_step']:.2f}x | "
              f"{a['actions'] == b['actions']} |")
    print(f"\n| Key-to-Door meta-test, 8 tasks | {rev} env steps/s | this tree env steps/s "
          "| ratio |")
    print("|---|---|---|---|")
    for name, a in old["meta_test"].items():
        b = new["meta_test"][name]
        print(f"| {name} | {a['env_steps_per_s']:,.1f} | {b['env_steps_per_s']:,.1f} | "
              f"{b['env_steps_per_s'] / a['env_steps_per_s']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="f22ffe5",
                    help="git revision to compare with (default: before the speed work)")
    ap.add_argument("--quick", action="store_true", help="fewer timed repeats")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.worker:
        args.out.write_text(json.dumps(worker(args.quick)))
        return 0
    old = measure(worktree(args.against), args.quick)
    new = measure(ROOT, args.quick)
    report(old, new, args.against)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        against=args.against, quick=args.quick, baseline=old, this_tree=new,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count())), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
