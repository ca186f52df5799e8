"""Learning histories: one PPO learner per task, a whole chunk of tasks in ONE jitted call.

``make_collect(env, cfg)`` returns a pure function ``(keys[N], env_params[N]) ->
(History [N, S, T, ...], episode_returns [N, E])``: the source's one-task learner
(``make_learner`` of the source whose config ``cfg`` is, e.g. PPO's ``lax.scan`` over
updates) mapped over tasks. No Python loop per step or update, so XLA sees the whole learner.

Design choices:
- Per-task RNG ``fold_in(base_key, task_index)`` (index into ``env.task_list()``) and a
  per-task program (``lax.map``): a task's history does not depend on which tasks share
  its chunk, its position, the chunk size, the devices, or a resume (tested).
- The task axis is split over this process's devices (``jax.local_devices()``; in a
  multi-process run each process first takes its share of the tasks, ``collect_dataset``,
  ``dicp_jax.distributed``): each device runs its own copy of one
  single-device program on its share of the chunk (no communication; see
  ``compile_collect`` for why not one sharded program). A chunk is padded to a fixed size
  (whole blocks on every device) so every chunk reuses the compiled programs. On CPU,
  ``--xla_force_host_platform_device_count=N`` makes N devices; the ``dicp`` CLI sets one
  per core (``--cpu-devices``), which ran the per-task updates 2.1x faster on 2 cores.
- Records are cast to compact dtypes inside the scan (int8 positions, 0/1 rewards in
  float16), so the stacked history is small while it is being built, not only on disk.
- Chunks are handed to a callback as soon as they are done (the dataset writer stores each
  one atomically), so an interrupted run loses at most one chunk, by default at most about
  a quarter of the run (``MIN_CHUNKS``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from dicp_jax import distributed, sources
from dicp_jax.history import History
from dicp_jax.reporting import Event, Reporter, silent
from dicp_jax.rng import task_keys

Array = jax.Array


def seed_keys(seed: int, task_index: Iterable[int]) -> Array:
    """One key per task, from (base seed, task index) only."""
    return task_keys(jax.random.PRNGKey(seed), task_index)


def make_collect(env: Any, cfg: Any, block: int = 1
                 ) -> Callable[[Array, Any], tuple[History, Array]]:
    """Pure ``(keys [N, 2], env_params [N]) -> (History [N, S, T], episode_returns [N, E])``.

    The source's learner is a function of ONE task, vmapped over a fixed ``block`` of tasks
    and looped over blocks (``lax.map``; N must be a multiple of ``block``). The loop body
    is then the same program whatever N, so a history is a function of (seed, task index,
    block) only. Vmapping over all N tasks was not: XLA CPU emitted the batched ops
    differently for other batch sizes (other rounding, then other sampled actions). The
    task axis is split across devices by ``collect`` (see ``compile_collect``)."""
    learn = sources.for_config(cfg).make_learner(env, cfg, env.storage_dtypes())

    def run_chunk(keys: Array, env_params: Any) -> tuple[History, Array]:
        hist = jax.lax.map(lambda a: learn(*a), (keys, env_params),
                           batch_size=block)  # [N, S, T, ...]
        return hist, jax.vmap(episode_returns, (0, 0, None))(hist.reward, hist.done,
                                                              env.horizon)

    return run_chunk


def episode_returns(reward: Array, done: Array, horizon: int) -> Array:
    """Mean over streams of the i-th complete episode's return: ``[S, T] -> [T // horizon]``.

    Episode ids come from ``done`` (so any episode structure is summed correctly); slots
    beyond ``T // horizon`` are dropped, exact when episodes end only at the horizon."""
    n_ep = reward.shape[-1] // horizon
    ep_id = jnp.cumsum(done, axis=-1) - done

    def per_stream(r, i):
        return jax.ops.segment_sum(r.astype(jnp.float32), i, num_segments=n_ep)

    return jax.vmap(per_stream)(reward, ep_id).mean(0)


# -- driver ----------------------------------------------------------------------------------
def bytes_per_task(env: Any, cfg: Any) -> int:
    """Device memory per task while a chunk runs: records (x2 for the final transpose) plus
    the rollout buffer and minibatch index tables (float32)."""
    dt = env.storage_dtypes()
    per_step = (2 * env.obs_dim * np.dtype(dt["obs"]).itemsize + np.dtype(dt["action"]).itemsize
                + np.dtype(dt["reward"]).itemsize + 1)
    records = 2 * per_step * cfg.n_streams * cfg.steps_per_stream
    rollout = 4 * cfg.batch_size * (env.obs_dim + 8) + 4 * cfg.n_epochs * cfg.batch_size
    return int(records + 4 * rollout + (1 << 16))


# Default chunking stores at least this many chunks, so an interrupt loses at most about
# 1 / MIN_CHUNKS of the run (rounded up to whole blocks per device).
MIN_CHUNKS = 4
# Tasks vmapped together inside a device's loop (``make_collect``). It is part of what a
# history is a function of, so it is recorded with the dataset. Small blocks suit CPUs
# (BENCHMARKS.md measures 1, 2 and 4); accelerators want far larger ones.
DEFAULT_BLOCK = 2


def chunk_size_for(env: Any, cfg: Any, n_tasks: int, n_devices: int,
                   memory_budget: float = 2 * 2**30, chunk_size: int | None = None,
                   block: int = DEFAULT_BLOCK) -> int:
    """Tasks per jitted call: a multiple of ``n_devices * block`` (every device runs whole
    blocks; padded tasks are computed and dropped).

    With ``chunk_size`` given: that size, balanced across calls. By default: at most the
    memory budget's worth and a ``1 / MIN_CHUNKS`` share of the run, choosing among those
    sizes the one that pads the fewest tasks (then the fewest calls)."""
    n_tasks, unit = max(int(n_tasks), 1), n_devices * block
    if chunk_size is not None:
        chunk_size = max(1, min(int(chunk_size), n_tasks))
        chunk_size = math.ceil(n_tasks / math.ceil(n_tasks / chunk_size))  # balanced calls
        return math.ceil(chunk_size / unit) * unit
    cap = min(max(1, int(memory_budget // bytes_per_task(env, cfg))),
              math.ceil(n_tasks / MIN_CHUNKS))
    sizes = range(unit, max(cap, unit) + 1, unit)
    return min(sizes, key=lambda c: (math.ceil(n_tasks / c) * c, math.ceil(n_tasks / c)))


_COMPILED: dict = {}


def compile_collect(env: Any, cfg: Any, per_device: int, devices: list | None = None,
                    block: int = DEFAULT_BLOCK) -> tuple[list, float]:
    """``make_collect`` for ``per_device`` tasks, compiled once per device (default: this
    process's),
    in parallel threads; returns (executables in device order, compile seconds).

    Why one single-device program per device and not one program sharded over a mesh: an
    SPMD-partitioned program (two or more devices) rounded differently from the same program
    unpartitioned (one device), so histories changed with the device count. Tasks need no
    communication, so each device runs its own copy. Cached per (env, cfg without seed,
    size, block, device): the seed only enters through the keys."""
    devices = list(jax.local_devices() if devices is None else devices)
    if per_device < 1 or per_device % block:
        raise ValueError(f"{per_device} tasks per device is not a positive multiple of "
                         f"{block} tasks per block")
    program = (type(env).__name__, repr(sorted(vars(env).items())),
               dataclasses.replace(cfg, seed=0), per_device, block)
    missing = [d for d in devices if (program, d.id) not in _COMPILED]
    t0 = time.perf_counter()
    if missing:
        fn = jax.jit(make_collect(env, cfg, block))
        zeros = np.zeros(per_device, np.int64)
        example = (seed_keys(0, zeros),
                   env.params_for(np.asarray(env.task_list())[zeros]))

        def for_device(device: Any):
            place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                   sharding=SingleDeviceSharding(device))
            return fn.lower(*jax.tree.map(place, example)).compile()

        with ThreadPoolExecutor(len(missing)) as pool:
            for device, compiled in zip(missing, pool.map(for_device, missing), strict=True):
                _COMPILED[(program, device.id)] = compiled
    return [_COMPILED[(program, d.id)] for d in devices], time.perf_counter() - t0


def collect(env: Any, task_index: np.ndarray, cfg: Any, *,
            on_chunk: Callable[[np.ndarray, History, np.ndarray], None] | None = None,
            chunk_size: int | None = None, memory_budget: float = 2 * 2**30,
            devices: list | None = None, report: Reporter = silent,
            stats: dict | None = None,
            block: int = DEFAULT_BLOCK) -> tuple[History, np.ndarray] | None:
    """Run PPO on ``task_index`` (indices into ``env.task_list()``), chunk by chunk.

    With ``on_chunk`` each finished chunk ``(task_index, History, returns)`` is passed on
    and nothing is kept; without it the concatenated numpy result is returned. ``stats``
    (if given) receives ``compile_s``, ``run_s``, ``chunk`` and ``env_steps``; ``report``
    a "collect" progress event per chunk (tasks done, env steps per second)."""
    task_index = np.asarray(task_index, dtype=np.int64)
    devices = list(jax.local_devices() if devices is None else devices)
    chunk = chunk_size_for(env, cfg, max(len(task_index), 1), len(devices), memory_budget,
                           chunk_size, block)
    per_device = chunk // len(devices)
    compiled, compile_s = compile_collect(env, cfg, per_device, devices, block)
    all_tasks = np.asarray(env.task_list())
    desc = f"collect (chunk {chunk})"
    report(Event("progress", desc, {"name": "collect", "done": 0, "total": len(task_index),
                                    "unit": "task"}))
    kept: list[tuple[History, np.ndarray]] = []
    run_s, steps_per_task = 0.0, cfg.n_streams * cfg.steps_per_stream
    with ThreadPoolExecutor(len(devices)) as pool:
        for s in range(0, len(task_index), chunk):
            idx = task_index[s:s + chunk]
            hist, rets, secs = _run_chunk(env, cfg, idx, chunk, all_tasks, pool, compiled,
                                          devices)
            run_s += secs
            if on_chunk is not None:
                on_chunk(idx, hist, rets)
            else:
                kept.append((hist, rets))
            done = s + len(idx)
            report(Event("progress", desc, {
                "name": "collect", "done": done, "total": len(task_index), "unit": "task",
                "postfix": {"steps_per_s": f"{done * steps_per_task / run_s:,.0f}"}}))
    if stats is not None:
        stats.update(compile_s=compile_s, run_s=run_s, chunk=chunk,
                     env_steps=len(task_index) * steps_per_task)
    if on_chunk is not None:
        return None
    hist = History(*(np.concatenate(f) for f in zip(*(h for h, _ in kept), strict=True)))
    return hist, np.concatenate([r for _, r in kept])


def _run_chunk(env, cfg, idx, chunk, all_tasks, pool, compiled, devices):
    """One chunk: padded to ``chunk`` tasks (the last repeated), each device's share run
    from its own host thread (a call blocks its thread while its device runs, so
    dispatching from one thread ran the devices one after the other). Returns the chunk's
    (History, returns) without the padding, and the seconds it ran."""
    per_device = chunk // len(devices)
    padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
    keys, params = seed_keys(cfg.seed, padded), env.params_for(all_tasks[padded])
    parts = [jax.tree.map(lambda a, i=i: a[i:i + per_device], (keys, params))
             for i in range(0, chunk, per_device)]
    t0 = time.perf_counter()
    run = lambda job: jax.device_get(job[0](*jax.device_put(job[1], job[2])))
    outs = list(pool.map(run, zip(compiled, parts, devices, strict=True)))
    secs = time.perf_counter() - t0
    hist = History(*(np.concatenate(f)[:len(idx)] for f in zip(*(h for h, _ in outs),
                                                               strict=True)))
    return hist, np.concatenate([r for _, r in outs])[:len(idx)], secs


def collect_dataset(env_name: str, out: str | Path, cfg: Any | None = None, *,
                    split: str = "all", n_tasks: int | None = None,
                    task_index: Any = None, resume: bool = False,
                    overwrite: bool = False, report: Reporter = silent,
                    chunk_size: int | None = None, memory_budget: float = 2 * 2**30,
                    stats: dict | None = None, block: int = DEFAULT_BLOCK,
                    devices: list | None = None, **env_kwargs: Any) -> dict:
    """Collect the split's tasks (first ``n_tasks`` of them), or exactly ``task_index``
    (indices into ``env.task_list()``; the split is then "subset"), into the dataset at ``out``.

    Completed chunks are stored as they finish; with ``resume`` the tasks already stored are
    skipped. ``metadata.json`` is written last. Returns the metadata dict.

    In a multi-process run (``dicp_jax.distributed``) every process calls this with the
    same arguments: the tasks still to do are split over the processes in proportion to
    their devices, each process runs its share on its own devices and stores its own
    shards, and process 0 writes ``metadata.json`` once every process is done. A history
    depends only on (seed, task index, block), so the dataset is the single-process one,
    and a resume redoes exactly the tasks no process stored, whichever process died."""
    import dicp_envs
    from dicp_jax import __version__
    from dicp_jax.config import to_dict

    env, _ = dicp_envs.make(env_name, **env_kwargs)
    cfg = (sources.get(dicp_envs.family(env_name).source).paper_config(env_name)
           if cfg is None else cfg)
    cfg.validate()
    source = sources.for_config(cfg)
    if task_index is not None:
        idx, split = np.asarray(task_index, np.int64), "subset"
    else:
        idx = dicp_envs.split_indices(env_name, split)
    idx = idx if n_tasks is None else idx[:n_tasks]
    tasks = np.asarray(env.task_list())[idx]
    header = dict(env_name=env_name, env_kwargs=env_kwargs, split=split,
                  task_index=idx, tasks=tasks, source=source.NAME, source_config=to_dict(cfg),
                  seed=cfg.seed, source_algorithm=source.DESCRIPTION,
                  task_seed="jax.random.fold_in(PRNGKey(seed), task_index)",
                  tasks_per_block=block, version=__version__)
    writer = _open_writer(out, header, resume, overwrite)
    done = writer.done_tasks()
    todo = distributed.process_share(
        np.asarray([i for i in idx if int(i) not in done], dtype=np.int64))
    if len(todo):
        from dicp_jax.host.collect import collect_host  # real Meta-World: envs stepped on the host

        run = collect_host if env.host_stepped else collect
        run(env, todo, cfg, on_chunk=writer.write_chunk, chunk_size=chunk_size,
                memory_budget=memory_budget, report=report, stats=stats, block=block,
                devices=devices)
    distributed.barrier("dicp-collect-done")  # every process's shards are stored
    meta = writer.finalize() if distributed.is_main() else None
    distributed.barrier("dicp-collect-finalized")
    return meta if meta is not None else json.loads((Path(out) / "metadata.json").read_text())


def _open_writer(out: str | Path, header: dict, resume: bool, overwrite: bool) -> Any:
    """The dataset writer of this process. With several processes, process 0 opens the
    dataset (overwrite, leftovers of an interrupted write) once all have run their own
    checks of the directory, the others join it afterwards, and nobody writes a shard
    until every process has read which tasks are already stored: so all of them split
    the same remaining tasks."""
    from dicp_jax.history import DatasetWriter

    if not distributed.is_multi():
        return DatasetWriter(out, header, resume=resume, overwrite=overwrite)
    import jax

    tag = f"-p{jax.process_index()}"
    distributed.barrier("dicp-collect-checked")
    writer = (DatasetWriter(out, header, resume=resume, overwrite=overwrite, tag=tag)
              if distributed.is_main() else None)
    distributed.barrier("dicp-collect-opened")
    if writer is None:
        writer = DatasetWriter(out, header, tag=tag, join=True)
    distributed.barrier("dicp-collect-listed")
    return writer
