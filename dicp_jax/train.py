"""Train the in-context Transformer (AD when dynamics_strength = 0, DICP otherwise).

Everything per step runs on device: windows are sampled inside the jitted step, several
steps run per call under ``lax.scan``, the batch is sharded over a 1-D ``data`` mesh of all
devices (params replicated), and the step's randomness is ``fold_in(rng, step)``, so a run
resumed from a checkpoint continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import dicp_envs
from dicp_jax import checkpoint as ckpt
from dicp_jax import codecs, distributed, methods
from dicp_jax import config as cfglib
from dicp_jax.data import (
    TrainData,
    counterfactuals,
    gather_windows,
    prepare,
    sample_indices,
    to_device,
)
from dicp_jax.model import ModelConfig
from dicp_jax.reporting import Event, Reporter, append_metrics, plot_metrics, silent
from dicp_jax.validate import MethodValidator, Validator


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: str = "ad"  # the imitation method (``dicp_jax.methods``): model, layout, loss
    steps: int = 50_000
    batch_size: int = 512
    lr: float = 1e-2  # peak of the cosine schedule
    warmup_steps: int = 1000
    end_lr_ratio: float = 0.0  # final lr = lr * end_lr_ratio
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dynamics_strength: float = 1.0  # lambda; 0 = plain Algorithm Distillation
    # Training sequence length in attention windows (seq_windows * n_transit transitions).
    # Longer sequences are trained under the same sliding-window attention as cached
    # inference, so keys of deeper layers carry information from before the window, as they
    # do in the meta-test's ring-buffer cache. 1 = one window (the paper's code).
    seq_windows: int = 1
    # Train each target only on a context it can have at meta-test: a position whose window
    # is cut off by the sequence start is masked unless the sequence starts its stream
    # (a cut window looks like "no history yet", which mid-stream behaviour is not). Use with
    # seq_windows > 1, or most positions are masked.
    true_context: bool = False
    stream_start_prob: float = 0.0  # fraction of sequences that start at a stream's step 0
    # Drop train tasks whose source learner ended below this fraction of the optimal return
    # (mean of its last 5 episodes). A learner that collapsed onto a wrong cell teaches
    # "no reward yet: repeat the same path", the opposite of exploring.
    min_source_return: float = 0.0
    # Keep those tasks for the dynamics heads only: their learners revisit a wrong cell while
    # the goal is in context, the "no reward here" evidence that the other histories lack.
    dynamics_from_dropped: bool = False
    # Weight (times lambda) of the dynamics loss on counterfactual actions: at every S_t a
    # branch action token with another action, trained on the env's true outcome
    # (``data.counterfactuals``), so the world model also learns the outcomes of the actions
    # the source learner did not take, which are what a planner asks about. 0 = off.
    counterfactual: float = 0.0
    steps_per_call: int = 100  # train steps per jitted call (lax.scan)
    eval_every: int = 2500
    eval_windows: int = 512
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    seed: int = 0
    split_seed: int | None = None  # None: the env's registered split

    def validate(self) -> None:
        methods.get(self.method)  # unknown: a ConfigError listing the known ones
        for k in ("steps", "batch_size", "seq_windows", "steps_per_call", "eval_every",
                  "eval_windows", "ckpt_every", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise cfglib.ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.lr <= 0 or self.dynamics_strength < 0 or self.warmup_steps < 0:
            raise cfglib.ConfigError("lr must be > 0, dynamics_strength and warmup_steps >= 0")
        if not 0.0 <= self.min_source_return <= 1.0:
            raise cfglib.ConfigError(f"min_source_return is a fraction of the optimal return "
                                     f"in [0, 1], got {self.min_source_return}")
        if self.counterfactual < 0:
            raise cfglib.ConfigError(f"counterfactual must be >= 0, got {self.counterfactual}")
        if not 0.0 <= self.stream_start_prob <= 1.0:
            raise cfglib.ConfigError(f"stream_start_prob must be in [0, 1], got "
                                     f"{self.stream_start_prob}")
        if not (0.0 <= self.end_lr_ratio <= 1.0 and 0.0 <= self.b1 < 1.0
                and 0.0 <= self.b2 < 1.0):
            raise cfglib.ConfigError("end_lr_ratio must be in [0, 1], b1 and b2 in [0, 1)")
        if self.grad_clip <= 0 or self.weight_decay < 0:
            raise cfglib.ConfigError("grad_clip must be > 0 and weight_decay >= 0")

    def sequence_length(self, model_cfg: ModelConfig) -> int:
        """Transitions per training sequence."""
        return self.seq_windows * model_cfg.n_transit


PRESETS = {
    "paper": TrainConfig(),
    # Darkroom on 2 CPU cores (2 XLA CPU devices). Against the same schedule with plain
    # n_transit windows over all train tasks, sequences of 2 windows trained on true
    # contexts plus leaving out failed source learners lifted DICP's episode-10 return from
    # 0.5 to 8.0 and AD's episodes 26-50 from 8% to 31% of optimal (8 test goals, 1 split);
    # keeping the dropped learners for the dynamics heads then lifted DICP's episodes 11-25
    # from 46% to 79% (with factored observations).
    "cpu": TrainConfig(steps=3000, batch_size=16, lr=1e-2, warmup_steps=200, steps_per_call=50,
                       eval_every=500, eval_windows=256, ckpt_every=1000, true_context=True,
                       seq_windows=2, stream_start_prob=0.1, min_source_return=0.5,
                       dynamics_from_dropped=True),
}

# Model-side parts of a preset: per-element attention dropout costs ~half the CPU step
# time (random bits for B x H x 2n x 2n), so the CPU schedule drops it; residual dropout
# stays (without it the model memorises the train tasks' goals: test obs acc fell to 93%).
PRESET_MODEL = {"paper": {}, "cpu": {"attn_dropout": 0.0}}


def default_model_config(env_name: str) -> ModelConfig:
    """The paper's model on a family: its context length from the family's registration."""
    return ModelConfig(n_transit=dicp_envs.family(env_name).n_transit)


def preset_configs(env_name: str, preset: str) -> tuple[TrainConfig, ModelConfig]:
    """(train config, model config) of a named preset for an env."""
    if preset not in PRESETS:
        raise cfglib.ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    model_cfg = cfglib.replace(default_model_config(env_name), **PRESET_MODEL[preset])
    return PRESETS[preset], model_cfg


class TrainedModel(NamedTuple):
    model: Any  # the method's Flax model
    params: Any
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    env_name: str
    codec: Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, min(cfg.warmup_steps, cfg.steps - 1), cfg.steps, cfg.lr * cfg.end_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(sched, cfg.b1, cfg.b2, weight_decay=cfg.weight_decay))


def context_mask(offset: jax.Array, seq: int, n_transit: int) -> jax.Array:
    """float [B, seq]: 1 where a position sees the context it would have at meta-test, i.e.
    its sequence starts the stream or at least n_transit - 1 earlier steps are inside it."""
    full = jnp.arange(seq) >= n_transit - 1
    return ((offset[:, None] == 0) | full[None]).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def make_train_call(model_cfg: ModelConfig, codec, cfg: TrainConfig, mesh: Mesh,
                    shape: tuple[int, int, int]):
    """jit(state, data, n_steps) -> (state, mean metrics) running n_steps steps in a scan.

    Cached, so runs with the same configs in one process share the compiled step."""
    method = methods.get(cfg.method)
    model, tx = method.make_model(model_cfg, codec), make_optimizer(cfg)
    n_tasks, n_streams, n_steps_data = shape
    n = cfg.sequence_length(model_cfg)

    def one_step(data, state, _):
        key = jax.random.fold_in(state["rng"], state["step"])
        k_idx, k_drop = jax.random.split(key)
        idx = sample_indices(k_idx, cfg.batch_size, n_tasks, n_streams, n_steps_data, n,
                             cfg.stream_start_prob)
        tokens, targets = gather_windows(data, mesh, *idx, n, method.window)
        weight = context_mask(idx[2], n, model_cfg.n_transit) if cfg.true_context else None
        grad_fn = jax.value_and_grad(method.loss, argnums=1, has_aux=True)
        (_, metrics), grads = grad_fn(model, state["params"], tokens, targets, k_drop,
                                      cfg.dynamics_strength, False, weight, cfg.counterfactual)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return dict(state, params=params, opt_state=opt_state, step=state["step"] + 1), metrics

    def call(state, data, n_steps):
        state, metrics = jax.lax.scan(lambda s, x: one_step(data, s, x), state, None, n_steps)
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(call, static_argnums=2, donate_argnums=0)


def init_state(model_cfg: ModelConfig, codec, cfg: TrainConfig, mesh: Mesh | None = None,
               abstract: bool = False) -> dict:
    """Train state {params, opt_state, step, rng}, replicated over ``mesh`` (or its shapes)."""
    make, key = _state_fn(model_cfg, codec, cfg), jax.random.PRNGKey(cfg.seed)
    if abstract:  # restored replicated over every process's devices in a multi-process run
        sharding = (distributed.replicated() if distributed.is_multi()
                    else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            jax.eval_shape(make, key))
    return jax.device_put(make(key), NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=8)
def _state_fn(model_cfg: ModelConfig, codec, cfg: TrainConfig):
    method = methods.get(cfg.method)
    model, tx = method.make_model(model_cfg, codec), make_optimizer(cfg)

    @jax.jit
    def make(key):
        params = method.init_params(model, jax.random.fold_in(key, 1))
        return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0),
                "rng": jax.random.fold_in(key, 2)}

    return make


def source_quality(env_name: str, meta) -> dict[int, float]:
    """Task index -> the source learner's last-5-episode return as a fraction of optimal,
    or the return itself for a family without an oracle."""
    env, _ = dicp_envs.make(env_name)
    idx = np.asarray(meta.task_index)
    last = np.asarray(meta.episode_returns)[:, -5:].mean(1)
    if not env.has_oracle:
        return dict(zip(idx.tolist(), last.tolist(), strict=True))
    opt = np.asarray(env.optimal_return(env.params_for(np.asarray(env.task_list())[idx])))
    frac = last / np.maximum(opt, 1e-9)
    return dict(zip(idx.tolist(), frac.tolist(), strict=True))


def load_split(env_name: str, data_dir, split_seed: int | None, min_source_return: float = 0.0,
               keep_dropped: bool = False, train_share: Callable[[int], slice] | None = None):
    """(train History, test History, split dict) of the tasks present in the dataset; train
    tasks whose source learner ended below ``min_source_return`` are left out (listed), or
    with ``keep_dropped`` loaded after the others (``split["imitate"]``: 1 kept, 0 dropped).
    ``train_share(n_train)``: load only that slice of the train histories (a process of a
    multi-process run loads what its devices hold); the split dict still lists them all."""
    from dicp_jax.history import load_history

    _, meta = load_history(data_dir, env_name=env_name, task_index=None, steps=1,
                           verify=False)
    quality = source_quality(env_name, meta)
    if min_source_return > 0 and not dicp_envs.make(env_name)[0].has_oracle:
        raise cfglib.ConfigError(f"min_source_return is a fraction of the optimal return: "
                                 f"{env_name} has no oracle; set min_source_return=0")
    split = {"seed": split_seed}
    for name in ("train", "test"):
        idx = [int(i) for i in dicp_envs.split_indices(env_name, name, seed=split_seed)
               if int(i) in quality]
        split[name] = sorted(idx)
    if min_source_return > 0:
        split["dropped_train"] = [i for i in split["train"] if quality[i] < min_source_return]
        split["train"] = [i for i in split["train"] if quality[i] >= min_source_return]
    if not split["train"] or not split["test"]:
        hint = (f" (min_source_return={min_source_return} left out every train task)"
                if split.get("dropped_train") else "")
        raise ValueError(f"dataset {data_dir} lacks train or test tasks of {env_name}{hint}: "
                         f"{split}")
    dropped = split.get("dropped_train", []) if keep_dropped else []
    split["imitate"] = [1.0] * len(split["train"]) + [0.0] * len(dropped)
    train_idx = split["train"] + dropped
    if train_share is not None:
        train_idx = train_idx[train_share(len(train_idx))]
    train_h, _ = load_history(data_dir, env_name=env_name, task_index=train_idx)
    test_h, _ = load_history(data_dir, env_name=env_name, task_index=split["test"])
    return train_h, test_h, split


def train(env_name: str, data_dir, run_dir, train_cfg: TrainConfig | None = None,
          model_cfg: ModelConfig | None = None, resume: bool = False, histories=None,
          report: Reporter = silent, devices=None, codec_cfg: Any = None) -> dict:
    """Train a model; returns the last validation metrics. ``codec_cfg``: options of the
    env's codec (``dicp_jax.codecs``; default: its defaults).

    ``histories=(train_history, test_history[, split dict])`` bypasses ``data_dir``
    (tests, benchmarks); ``devices`` defaults to ``jax.devices()``. Progress, each call's
    metrics and each validation go to ``report`` (``dicp_jax.reporting``)."""
    train_cfg = train_cfg or PRESETS["paper"]
    model_cfg = model_cfg or default_model_config(env_name)
    train_cfg.validate()
    model_cfg.validate()
    methods.get(train_cfg.method).check_config(train_cfg, model_cfg)
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        saved = ckpt.read_config(run_dir)
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume)"
                                  " to continue it or choose another directory")
        ckpt.check_compatible(saved, env_name, model_cfg, train_cfg, run_dir, codec_cfg)
    env = dicp_envs.make(env_name)[0]
    codec_cfg = codecs.config_type(env)() if codec_cfg is None else codec_cfg
    codec = codecs.for_env(env, codec_cfg)
    mesh = Mesh(np.array(jax.devices() if devices is None else devices), ("data",))
    # a process of a multi-process run loads only the train histories its devices hold
    share = (functools.partial(_process_tasks, mesh=mesh)
             if histories is None and distributed.is_multi() else None)
    if histories is None:
        train_h, test_h, split = load_split(env_name, data_dir, train_cfg.split_seed,
                                            train_cfg.min_source_return,
                                            train_cfg.dynamics_from_dropped,
                                            train_share=share and (lambda n: share(n)[0]))
        if split.get("dropped_train"):
            use = ("kept for the dynamics heads only" if train_cfg.dynamics_from_dropped
                   else "left out")
            report(Event("message", f"{use}: {len(split['dropped_train'])} train tasks whose "
                         f"source learner ended below {train_cfg.min_source_return:.0%} of "
                         f"optimal: {split['dropped_train']}",
                         {"dropped_train": list(split["dropped_train"])}))
    else:
        train_h, test_h = histories[:2]
        split = histories[2] if len(histories) > 2 else {"seed": train_cfg.split_seed}
    seq = train_cfg.sequence_length(model_cfg)
    if train_h.action.shape[2] < seq:
        raise ValueError(f"streams of {train_h.action.shape[2]} steps are shorter than a "
                         f"training sequence ({seq} transitions)")
    if train_cfg.batch_size % mesh.size:
        raise cfglib.ConfigError(f"batch_size={train_cfg.batch_size} must be divisible by the "
                                 f"{mesh.size} devices")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_config(run_dir, ckpt.run_config(env_name, model_cfg, train_cfg, data_dir, split,
                                               codec_cfg))
    train_cf = test_cf = None
    if share is None:
        train_idx = _train_task_index(split, train_h, required=False)
    else:  # this process's share of the train list (kept tasks, then dropped ones)
        train_idx = (split["train"] + (split.get("dropped_train", []) if
                                       train_cfg.dynamics_from_dropped else []))
        train_idx = train_idx[share(len(split["imitate"]))[0]]
    if train_cfg.counterfactual > 0:
        train_cf = counterfactuals(env_name, train_h, train_idx if share is not None else
                                   _train_task_index(split, train_h), train_cfg.seed)
    # validation reports them for every run that can have them
    if "test" in split and dicp_envs.make(env_name)[0].observation_is_state:
        test_cf = counterfactuals(env_name, test_h, split["test"], train_cfg.seed + 1)
    method = methods.get(train_cfg.method)
    if share is None:
        data = to_device(prepare(train_h, mesh.size, split.get("imitate"), train_cf,
                                 adapt=_adapter(method, env, train_idx)), mesh)
        shape = tuple(train_h.action.shape[:3])  # (tasks, streams, steps)
    else:
        n_train = len(split["imitate"])
        part, n_local = share(n_train)
        report(Event("message", f"process {jax.process_index()} holds train tasks "
                     f"{part.start}-{part.stop - 1} of {n_train} (loaded only those)",
                     {"train_tasks": [part.start, part.stop], "n_train": n_train}))
        local = prepare(train_h, 1, split["imitate"][part], train_cf,
                        adapt=_adapter(method, env, train_idx))
        data = _global_tasks(local, n_local, mesh)
        shape = (n_train, *train_h.action.shape[1:3])  # (tasks, streams, steps)
    model = method.make_model(model_cfg, codec)
    state = init_state(model_cfg, codec, train_cfg, mesh)
    mngr = ckpt.manager(run_dir, train_cfg.keep_checkpoints)
    if resume:
        state = ckpt.restore(mngr, state) or state
    test_data = prepare(test_h, cf=test_cf, adapt=_adapter(method, env, split.get("test")))
    if method.LAYOUT == "ad":
        validator = Validator(model, method.window, test_data, train_cfg.eval_windows,
                              train_cfg.seed, mesh=mesh)
    else:
        validator = MethodValidator(model, method, test_data, train_cfg.eval_windows,
                                    train_cfg.seed, mesh=mesh)
    call = make_train_call(model_cfg, codec, train_cfg, mesh, shape)
    val = _loop(state, data, call, validator, mngr, train_cfg, run_dir, report)
    plot_metrics(run_dir)
    return val


def _process_tasks(n_tasks: int, mesh: Mesh) -> tuple[slice, int]:
    """This process's share of the ``data`` axis over ``n_tasks`` train tasks: the axis is
    padded to a multiple of the mesh size and split into equal blocks, one per device in
    mesh order, so a process holds the blocks of its (contiguous) devices. Returns the real
    tasks among them and the share's padded length."""
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise RuntimeError(f"process {jax.process_index()}'s devices are not contiguous in "
                           "the data mesh")
    block = -(-n_tasks // mesh.size)
    first, stop = mine[0] * block, (mine[-1] + 1) * block
    return slice(min(first, n_tasks), min(stop, n_tasks)), stop - first


def _global_tasks(local: TrainData, n_local: int, mesh: Mesh) -> TrainData:
    """One process's prepared tasks (zero-padded to ``n_local``) -> the global task-sharded
    arrays; every process calls this with its own share (``_process_tasks``)."""
    sharding = NamedSharding(mesh, P("data"))
    n_procs = len({d.process_index for d in mesh.devices.flat})

    def place(a):
        a = np.asarray(a)
        a = np.concatenate([a, np.zeros((n_local - a.shape[0], *a.shape[1:]), a.dtype)])
        return jax.make_array_from_process_local_data(sharding, a,
                                                      (n_local * n_procs, *a.shape[1:]))

    return jax.tree.map(place, local)


def _adapter(method, env, task_index):
    """The method's preparation of a split's data (``prepare_data``), given its tasks'
    params (None when the histories came without their task indices)."""
    tasks = (None if task_index is None
             else env.params_for(np.asarray(env.task_list())[np.asarray(task_index)]))
    return lambda data: method.prepare_data(data, env, tasks)


def _train_task_index(split: dict, train_h, required: bool = True) -> list[int] | None:
    """Global task index of every train history (kept tasks, then dropped ones)."""
    idx = list(split.get("train", []))
    if len(idx) < train_h.action.shape[0]:
        idx += list(split.get("dropped_train", []))
    if len(idx) != train_h.action.shape[0]:
        if not required:
            return None
        raise cfglib.ConfigError("counterfactual targets need the task index of every train "
                                 "history (split['train'], then split['dropped_train'])")
    return idx


def _loop(state, data, call, validator, mngr, cfg: TrainConfig, run_dir,
          report: Reporter) -> dict:
    """Train to ``cfg.steps``: each call's metrics go to ``metrics.jsonl`` and ``report``
    (with a "train" progress event), each validation too, with a one-line summary."""
    step = int(state["step"])
    val: dict = {}
    report(Event("progress", "train", {"name": "train", "done": step, "total": cfg.steps}))
    while step < cfg.steps:
        boundary = min(cfg.steps, (step // cfg.eval_every + 1) * cfg.eval_every,
                       (step // cfg.ckpt_every + 1) * cfg.ckpt_every)
        n = min(cfg.steps_per_call, boundary - step)
        t0 = time.perf_counter()
        state, metrics = call(state, data, n)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - t0
        step += n
        record = {"step": step, **metrics, "steps_per_s": n / dt}
        append_metrics(run_dir, record)
        report(Event("metrics", "", record))
        report(Event("progress", "train", {
            "name": "train", "done": step, "total": cfg.steps,
            "postfix": {"loss": f"{metrics['loss']:.4f}", "steps_s": f"{n / dt:.1f}"}}))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = validator(state["params"])
            append_metrics(run_dir, {"step": step, "val": val})
            report(Event("metrics", f"step {step}: " + ", ".join(  # None: no such position
                f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in val.items()
                if not isinstance(v, dict)), {"step": step, "val": val}))
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            ckpt.save(mngr, step, state)
    return val


def load_trained(run_dir, step: int | None = None) -> TrainedModel:
    """The trained model of a run directory (latest checkpoint unless ``step``)."""
    saved = ckpt.read_config(run_dir)
    model_cfg = cfglib.from_dict(ModelConfig, saved["model"])
    train_cfg = cfglib.from_dict(TrainConfig, saved["train"])
    env = dicp_envs.make(saved["env_name"])[0]
    codec = codecs.for_env(env, cfglib.from_dict(codecs.config_type(env), saved["codec"]))
    model = methods.get(train_cfg.method).make_model(model_cfg, codec)
    mngr = ckpt.manager(run_dir, train_cfg.keep_checkpoints)
    target = init_state(model_cfg, codec, train_cfg, abstract=True)
    state = ckpt.restore(mngr, target, step)
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    return TrainedModel(model, state["params"], model_cfg, train_cfg, saved["env_name"], codec)


__all__ = ["PRESETS", "PRESET_MODEL", "TrainConfig", "TrainedModel", "context_mask",
           "default_model_config", "load_trained", "make_optimizer", "preset_configs",
           "train"]
