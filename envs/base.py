"""What every task family provides, and what it declares instead of being probed for.

A *task family* is a jittable gymnax environment whose task lives in ``EnvParams`` (a batch
of tasks is a batch of params), plus a registration (``dicp_envs.register``) carrying its
train/test split and the paper's defaults for it. The library reads these declarations;
it never asks ``hasattr`` or matches env names.

The env object provides (gymnax API plus):

- ``horizon`` (episode length; episodes end only there), ``obs_dim``, ``num_actions``;
- ``task_list()``: every task in a fixed enumeration order (a task's *index* is its
  position there: RNG keys and splits are functions of it), ``params_for(tasks [N, k])``;
- optional oracles, present iff ``has_oracle``: ``optimal_return(params)``,
  ``optimal_action(state, params)`` and ``recorded_optimal_actions(obs, reward, done,
  params)``, the oracle's action at each step of a recorded stream (jittable; result
  tables, DPT's labels, IDT's target return);
- ``state_from_obs(obs)`` iff ``observation_is_state``.

Declared capabilities (class attributes, see ``TaskEnv``):

- ``codec``: the name of the codec that embeds its observations/rewards/actions;
- ``observation_is_state``: an observation is everything an outcome depends on, so the
  outcome of any action from a recorded observation can be computed (counterfactual
  targets need it);
- ``reward_of_arrival``: the reward of a step is a function of the observation it arrives
  at (the planner's reward memory assumes it);
- ``host_stepped``: not a jittable gymnax env but simulations stepped from Python (real
  Meta-World, ``dicp_envs.metaworld_ml1``): collection and the meta-test then run the
  host loops of ``dicp_jax.host``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np


class TaskEnv:
    """Mixin of the declarations above, with the conservative defaults."""

    codec: ClassVar[str] = "grid"
    has_oracle: ClassVar[bool] = False
    observation_is_state: ClassVar[bool] = False
    reward_of_arrival: ClassVar[bool] = False
    host_stepped: ClassVar[bool] = False

    def storage_dtypes(self) -> dict[str, Any]:
        """The dtypes its histories are recorded in (exact for its values, as small as
        that allows: Key-to-Door at paper scale is billions of transitions)."""
        return {"obs": np.float32, "action": np.int32, "reward": np.float32, "done": np.bool_}


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered task family: how to build its env, how its tasks split, and the paper's
    defaults for it (so no per-env table lives in training, collection or evaluation).

    ``source`` names the family's source algorithm (``dicp_jax.sources``) and
    ``source_settings`` maps a source's name to its paper settings on this family (overrides
    of that source's config defaults). ``splits`` is for families whose tasks are *drawn*
    rather than enumerated (continuous goals): ``splits(split, seed) -> indices`` into
    ``task_list()``; None = the paper's shuffled split of the enumeration."""

    name: str
    factory: Callable[..., Any]
    split_seed: int = 0
    train_ratio: float = 0.9
    n_transit: int = 80  # paper context length in transitions
    plan_depth: int = 8  # paper planning depth
    source: str = "ppo"
    splits: Callable[[str, int | None], Any] | None = None
    source_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)


__all__ = ["Family", "TaskEnv"]
