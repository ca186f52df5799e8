"""Training throughput: tokens/s and achieved FLOP/s vs this machine's float32 matmul peak.

Times the real jitted train call (window sampling on device + forward + backward + AdamW,
``steps_per_call`` steps under ``lax.scan``) on synthetic Darkroom histories, for the
``cpu`` preset and the paper model at the paper batch (512). The peak is a jitted
``jnp.dot`` of two 2048x2048 float32 matrices measured in the same run. FLOPs are counted
ANALYTICALLY (matmuls only: dense layers, attention scores and values over the full
2n x 2n masked window, output heads; backward = 2 x forward), so "fraction of peak" is an
honest model-FLOP utilisation, not XLA's own count.

    python benchmarks/bench_train.py [--quick] [--out PATH]
    dicp bench train --quick
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

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_flops_per_step(model_cfg, codec, batch: int, seq: int) -> float:
    """Analytic matmul FLOPs of one train step of ``seq``-transition sequences
    (forward + backward = 3 x forward)."""
    w, m, t = model_cfg.width, model_cfg.mlp, 2 * seq
    per_token_layer = 2 * (3 * w * w + w * w + 2 * w * m) + 2 * 2 * t * w  # dense + attention
    heads = 2 * w * (codec.action.head_size + codec.reward.head_size + codec.obs.head_size
                     + 1)
    forward = batch * t * (model_cfg.n_layers * per_token_layer + heads)
    return 3.0 * forward


def bench_config(name: str, train_cfg, model_cfg, data, mesh, calls: int) -> dict:
    from dicp_jax import codecs
    from dicp_jax.train import init_state, make_train_call

    codec = codecs.for_name("darkroom")
    shape = tuple(data.action.shape[:3])
    call = make_train_call(model_cfg, codec, train_cfg, mesh, shape)
    state = init_state(model_cfg, codec, train_cfg, mesh)
    n = train_cfg.steps_per_call
    t0 = time.perf_counter()
    state, metrics = call(state, data, n)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - t0  # compile + one call
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        state, metrics = call(state, data, n)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - t0)
    steps_s = n / best
    seq = train_cfg.sequence_length(model_cfg)
    tokens_s = steps_s * train_cfg.batch_size * 2 * seq
    flops = train_flops_per_step(model_cfg, codec, train_cfg.batch_size, seq) * steps_s
    return {"config": name, "batch": train_cfg.batch_size, "n_transit": model_cfg.n_transit,
            "width": model_cfg.width, "layers": model_cfg.n_layers,
            "steps_per_call": n, "compile_plus_first_call_s": first_s,
            "steps_per_s": steps_s, "tokens_per_s": tokens_s, "flops_per_s": flops,
            "loss": float(metrics["loss"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from jax.sharding import Mesh

    from dicp_jax import config as cfglib
    from dicp_jax.data import prepare, to_device
    from dicp_jax.testing import synthetic_history
    from dicp_jax.train import preset_configs

    mesh = Mesh(np.array(jax.devices()), ("data",))
    hist = synthetic_history("darkroom", np.arange(0, 81, 5), 4, 400, jax.random.PRNGKey(0))
    data = to_device(prepare(hist, mesh.size), mesh)
    peak = matmul_peak()
    cpu_train, cpu_model = preset_configs("darkroom", "cpu")
    paper_train, paper_model = preset_configs("darkroom", "paper")
    runs = [("cpu preset", cfglib.replace(cpu_train, steps_per_call=10 if args.quick else 50),
             cpu_model),
            ("paper (batch 512)", cfglib.replace(paper_train,
                                                 steps_per_call=2 if args.quick else 5),
             paper_model)]
    rows = [bench_config(name, t, m, data, mesh, calls=1 if args.quick else 3)
            for name, t, m in runs]
    for r in rows:
        r["fraction_of_peak"] = r["flops_per_s"] / peak
    print(f"\nfloat32 matmul peak (2048x2048 jnp.dot): {peak / 1e9:.1f} GFLOP/s "
          f"on {jax.devices()[0].platform} x{len(jax.devices())}\n")
    print("| config | batch | steps/s | tokens/s | GFLOP/s (analytic) | of peak "
          "| compile+1st (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['batch']} | {r['steps_per_s']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['flops_per_s'] / 1e9:.2f} | "
              f"{r['fraction_of_peak']:.1%} | {r['compile_plus_first_call_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "train", "quick": args.quick, "flop_count": "analytic (matmuls)",
        "matmul_peak_flops_per_s": peak, "device": str(jax.devices()[0]),
        "n_devices": len(jax.devices()), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
