"""Held-out validation: fixed windows of test tasks' histories -> accuracy metrics.

Kept apart from ``data`` (which only lays histories out on device) because it runs the
model: data -> model would be a back-edge of the import graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dicp_jax.data import TrainData, sample_indices
from dicp_jax.model import DICPTransformer, branch_heads


def reward_events(codec) -> bool:
    """Whether a reward is an event to count: a reward part classifying a finite set of
    values (the grid's ``values``), where ``reward > 0`` means a goal was reached. Then the
    recall, false-alarm and "rewarded earlier in the window" metrics apply. A continuous
    reward is dense (Meta-World pays something at almost every step), so those metrics
    would count every step: they are left out, and the reward's mean absolute error is
    reported instead."""
    return hasattr(codec.reward, "values")


def goal_seen(next_obs: jax.Array, reward: jax.Array) -> jax.Array:
    """bool [..., n]: an earlier transition of the window was rewarded in the same cell s'."""
    same = jnp.all(next_obs[..., :, None, :] == next_obs[..., None, :, :], -1)  # [.., i, j]
    earlier = jnp.tril(jnp.ones(same.shape[-2:], bool), -1)
    return jnp.any(same & earlier & (reward[..., None, :] > 0), -1)


def after_reward(reward: jax.Array) -> jax.Array:
    """bool [..., n]: an earlier transition of the window was rewarded."""
    pos = (reward > 0).astype(jnp.int32)
    return jnp.cumsum(pos, -1) - pos > 0


class Validator:
    """Fixed windows of held-out tasks' histories -> accuracy metrics of a set of params.

    Reported: action / reward / next-obs accuracy, reward recall on rewarding transitions
    (also restricted to those whose rewarding cell was already rewarded earlier in the
    window, and to those of them that follow an unrewarded step), the false-alarm rate on
    unrewarded transitions once the window holds a reward (a planner chases those), each
    accuracy also by position in the context. Codecs without reward events
    (``reward_events``) get the accuracies (each part's ``correct``) and the reward's mean
    absolute error only; a next observation that is not ``predicted`` gets no accuracy."""

    def __init__(self, model, window: Callable, test_data: TrainData, n_windows: int,
                 seed: int = 0, chunk: int = 128, mesh: Mesh | None = None):
        n = model.cfg.n_transit
        self.chunk = min(chunk, n_windows)
        n_windows = -(-n_windows // self.chunk) * self.chunk
        d = jax.device_put(test_data, None if mesh is None else NamedSharding(mesh, P()))
        idx = sample_indices(jax.random.PRNGKey(seed + 7919), n_windows,
                             *d.action.shape[:3], n)
        get = jax.jit(jax.vmap(window, (None, 0, 0, 0, None)), static_argnums=4)
        self.tokens, self.targets = get(d, *idx, n)
        self.events = reward_events(model.codec)
        self.seen = (jax.jit(goal_seen)(self.targets.next_obs, self.targets.reward)
                     if self.events else None)
        self.model, self.n_windows = model, n_windows
        self._stats = _chunk_stats(model.cfg, model.codec)

    def __call__(self, params) -> dict:
        sums = None
        for i in range(0, self.n_windows, self.chunk):
            part = jax.tree.map(lambda a, i=i: a[i:i + self.chunk],
                                (self.tokens, self.targets, self.seen))
            s = self._stats(params, *part)
            sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        s = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
        w = float(self.n_windows)
        ratio = lambda a, b: float(a.sum() / b.sum()) if b.sum() > 0 else None
        by_pos = lambda a, b: [float(x / y) if y > 0 else None for x, y in zip(a, b, strict=True)]
        if not self.events:
            return _regression_metrics(s, w)
        return {
            "action_acc": float(s["action_ok"].sum() / (w * len(s["action_ok"]))),
            "reward_acc": float(s["reward_ok"].sum() / (w * len(s["reward_ok"]))),
            "reward_recall": ratio(s["rewarding_ok"], s["rewarding"]),
            "reward_recall_seen": ratio(s["seen_ok"], s["seen"]),
            # arriving at a goal rewarded earlier in the window, after an unrewarded step:
            # the in-context lookup the planner needs, without the reward-follows-reward cue
            "reward_recall_arrival": ratio(s["arrival_ok"], s["arrival"]),
            "reward_false_alarm": ratio(s["false_alarm"], s["known_neg"]),
            "obs_acc": float(s["obs_ok"].sum() / (w * len(s["obs_ok"]))),
            **({} if "cf_ok" not in s else {
                # another action than the learner's at every step (``counterfactuals``):
                # what a planner asks; false alarms counted once the window holds a reward
                "cf_reward_acc": float(s["cf_ok"].sum() / (w * len(s["cf_ok"]))),
                "cf_reward_recall": ratio(s["cf_rewarding_ok"], s["cf_rewarding"]),
                "cf_false_alarm": ratio(s["cf_false_alarm"], s["cf_known_neg"])}),
            "n_rewarding": int(s["rewarding"].sum()), "n_rewarding_seen": int(s["seen"].sum()),
            "n_arrival": int(s["arrival"].sum()),
            "by_position": {"action_acc": (s["action_ok"] / w).tolist(),
                            "reward_acc": (s["reward_ok"] / w).tolist(),
                            "obs_acc": (s["obs_ok"] / w).tolist(),
                            "reward_recall": by_pos(s["rewarding_ok"], s["rewarding"])},
        }


def _regression_metrics(s: dict, w: float) -> dict:
    """The metrics of a codec without reward events, from per-position sums ``s``."""
    avg = lambda k: float(s[k].sum() / (w * len(s[k])))  # over windows and positions
    obs = "obs_ok" in s  # absent: the next observation is not predicted
    return {
        "action_acc": avg("action_ok"), "reward_acc": avg("reward_ok"),
        "reward_mae": avg("reward_abs_err"), "obs_acc": avg("obs_ok") if obs else None,
        "by_position": {"action_acc": (s["action_ok"] / w).tolist(),
                        "reward_acc": (s["reward_ok"] / w).tolist(),
                        "reward_mae": (s["reward_abs_err"] / w).tolist(),
                        **({"obs_acc": (s["obs_ok"] / w).tolist()} if obs else {})},
    }


@functools.lru_cache(maxsize=8)
def _chunk_stats(model_cfg, codec):
    """Jitted per-position correct counts of one chunk of windows (cached per model)."""
    model = DICPTransformer(model_cfg, codec)
    return jax.jit(functools.partial(_stats_impl, model))


def _stats_impl(model, params, tokens, targets, seen):
    codec = model.codec
    heads, kv = jax.vmap(lambda t: model.apply({"params": params}, t))(tokens)
    act_ok = codec.action.correct(heads.action_logits[:, 0::2], targets.action)
    rew_ok = codec.reward.correct(heads.reward_logits[:, 1::2], targets.reward)
    obs_ok = codec.obs.correct(heads.obs_logits[:, 1::2], targets.next_obs)
    f = lambda x: x.astype(jnp.float32).sum(0)  # -> by position [n]
    if seen is None:  # no reward events (``reward_events``): accuracies and reward error
        err = jnp.abs(codec.reward.mode(heads.reward_logits[:, 1::2]) - targets.reward)
        obs = {"obs_ok": f(obs_ok)} if getattr(codec.obs, "predicted", True) else {}
        return {"action_ok": f(act_ok), "reward_ok": f(rew_ok), "reward_abs_err": f(err),
                **obs}
    pos = targets.reward > 0
    arrival = pos & seen & (tokens.prev_reward[:, 0::2] <= 0)  # not "reward follows reward"
    known_neg = ~pos & after_reward(targets.reward)  # a planner would chase a false alarm
    cf = {}
    if targets.cf_action is not None:
        key = jax.random.PRNGKey(0)  # deterministic: no dropout
        bh = jax.vmap(lambda t, v, a: branch_heads(model, params, t, v, a, key))(
            tokens, kv, targets.cf_action)
        cf_ok = codec.reward.correct(bh.reward_logits, targets.cf_reward)
        cf_pos = targets.cf_reward > 0
        cf_neg = ~cf_pos & after_reward(targets.reward)
        cf = {"cf_ok": f(cf_ok), "cf_rewarding": f(cf_pos), "cf_rewarding_ok": f(cf_pos & cf_ok),
              "cf_known_neg": f(cf_neg), "cf_false_alarm": f(cf_neg & ~cf_ok)}
    return cf | {"action_ok": f(act_ok), "reward_ok": f(rew_ok), "obs_ok": f(obs_ok),
            "rewarding": f(pos), "rewarding_ok": f(pos & rew_ok),
            "seen": f(pos & seen), "seen_ok": f(pos & seen & rew_ok),
            "arrival": f(arrival), "arrival_ok": f(arrival & rew_ok),
            "known_neg": f(known_neg), "false_alarm": f(known_neg & ~rew_ok)}


__all__ = ["Validator", "after_reward", "goal_seen", "reward_events"]


class MethodValidator:
    """Validation of a method with its own layout: fixed windows of held-out histories,
    scored by the method's ``stats(model, params, tokens, targets) -> {metric: (hits [P],
    counts [P])}``; reported as each metric's overall ratio and by position ``P``."""

    def __init__(self, model, method, test_data: TrainData, n_windows: int, seed: int = 0,
                 chunk: int = 128, mesh: Mesh | None = None):
        n = model.cfg.n_transit
        self.chunk = min(chunk, n_windows)
        self.n_windows = -(-n_windows // self.chunk) * self.chunk
        d = jax.device_put(test_data, None if mesh is None else NamedSharding(mesh, P()))
        idx = sample_indices(jax.random.PRNGKey(seed + 7919), self.n_windows,
                             *d.action.shape[:3], n)
        get = jax.jit(jax.vmap(method.window, (None, 0, 0, 0, None)), static_argnums=4)
        self.tokens, self.targets = get(d, *idx, n)
        self._stats = jax.jit(functools.partial(method.stats, model))

    def __call__(self, params) -> dict:
        sums = None
        for i in range(0, self.n_windows, self.chunk):
            part = jax.tree.map(lambda a, i=i: a[i:i + self.chunk], (self.tokens, self.targets))
            s = self._stats(params, *part)
            sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        sums = jax.device_get(sums)
        out, by_position = {}, {}
        for name, (hits, counts) in sums.items():
            hits, counts = np.asarray(hits, np.float64), np.asarray(counts, np.float64)
            out[name] = float(hits.sum() / counts.sum()) if counts.sum() > 0 else None
            by_position[name] = [float(h / c) if c > 0 else None
                                 for h, c in zip(hits, counts, strict=True)]
        return {**out, "by_position": by_position}
