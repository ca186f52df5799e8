"""Registry of environments and their train/test task splits.

A split is the paper's public-code procedure: enumerate the tasks in row-major order,
``random.seed(split_seed)``, ``random.shuffle``, first ``round(n * train_ratio)`` are train.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

from dicp_envs.base import Family

SPLITS = ("train", "test", "all")

_REGISTRY: dict[str, Family] = {}


def register(name: str, factory: Callable[..., Any], **defaults: Any) -> Family:
    """Make ``factory`` (a ``TaskEnv`` gymnax class) available as ``make(name)``, with its
    split and paper defaults (``Family`` fields)."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = Family(name, factory, **defaults)
    return _REGISTRY[name]


def unregister(name: str) -> None:
    """Remove a family (tests register toy families and clean up after themselves)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return sorted(_REGISTRY)


def family(name: str) -> Family:
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def make(name: str, **env_kwargs: Any):
    """gymnax-style constructor: ``env, params = make("darkroom")``."""
    env = family(name).factory(**env_kwargs)
    return env, env.default_params


def split_indices(name: str, split: str = "all", seed: int | None = None,
                  ratio: float | None = None, n_tasks: int | None = None) -> np.ndarray:
    """Indices (into the row-major task list) of a split, in the shuffled order."""
    s = family(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    seed = s.split_seed if seed is None else seed
    if s.splits is not None and split != "all":
        return np.asarray(s.splits(split, seed), dtype=np.int64)
    if n_tasks is None:
        n_tasks = len(make(name)[0].task_list())
    ratio = s.train_ratio if ratio is None else ratio
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"train ratio must be in [0, 1], got {ratio}")
    order = list(range(n_tasks))
    if split == "all":
        return np.asarray(order, dtype=np.int64)
    # Same permutation as ``random.seed(seed); random.shuffle(order)`` (the paper's code) but
    # on a private generator, so the caller's global ``random`` state is left untouched.
    random.Random(seed).shuffle(order)
    n_train = round(n_tasks * ratio)
    chosen = order[:n_train] if split == "train" else order[n_train:]
    return np.asarray(chosen, dtype=np.int64)


def task_array(name: str, split: str = "all", seed: int | None = None,
               ratio: float | None = None, **env_kwargs: Any) -> np.ndarray:
    """The split's task tuples as an ``int[N, k]`` array (k = 2 goal, 4 key+door, 1 perm)."""
    env, _ = make(name, **env_kwargs)
    all_tasks = np.asarray(env.task_list())
    idx = split_indices(name, split, seed, ratio, n_tasks=len(all_tasks))
    return all_tasks[idx]


def tasks(name: str, split: str = "all", seed: int | None = None,
          ratio: float | None = None, **env_kwargs: Any):
    """The split's tasks as ONE batched ``EnvParams`` pytree (leading axis = task)."""
    env, _ = make(name, **env_kwargs)
    return env.params_for(task_array(name, split, seed, ratio, **env_kwargs))
