"""The source-algorithm protocol: what collection needs from a learner, and nothing more.

A source is a module-like object with

- ``NAME``: its registry name (recorded with every dataset);
- ``DESCRIPTION``: one line saying what it is (recorded too);
- ``Config``: its frozen config dataclass (hashable: part of the compile cache key);
- ``paper_config(env_name, **overrides) -> Config``: the paper's settings on a family;
- ``make_learner(env, cfg, dtypes) -> learn(key, env_params) -> History [S, T, ...]``:
  one task's whole learning run, recorded in the given storage dtypes, pure and jittable.

Collection maps ``learn`` over tasks and devices and knows nothing else about it, so a
Gaussian PPO or SAC plugs in as a new module plus a registry line.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from dicp_jax.config import Registry


class History(NamedTuple):
    """A learning run's record: N tasks, S streams, T steps per stream (numpy or jax
    arrays). ``make_learner``'s ``learn`` returns one task's ``[S, T, ...]``."""

    obs: Any  # [N, S, T, obs_dim] int8 for the grid family
    action: Any  # [N, S, T] int8
    reward: Any  # [N, S, T] float16 for the grid family (0/1 rewards)
    next_obs: Any  # [N, S, T, obs_dim] the true s' (also at an episode's last step)
    done: Any  # [N, S, T] bool: the episode ended at this step (obs[t+1] is a reset obs)



SOURCES = Registry("source")
get, names = SOURCES.get, SOURCES.names


def register(source: ModuleType) -> ModuleType:
    for attr in ("NAME", "DESCRIPTION", "Config", "paper_config", "make_learner"):
        if not hasattr(source, attr):
            raise TypeError(f"source {source.__name__} lacks {attr}")
    return SOURCES.register(source.NAME, source)


def for_config(cfg: Any) -> ModuleType:
    """The source whose ``Config`` type ``cfg`` is (exactly: one source's config may
    extend another's)."""
    for source in map(get, names()):
        if type(cfg) is source.Config:
            return source
    raise TypeError(f"no registered source takes a {type(cfg).__name__}")
