"""Planners by name: how the meta-test picks an action at a real step, behind one signature.

A planner is a registered ``Planner``: a name, its own frozen config type (a ``PlanConfig``
subclass whose defaults are the planner's defaults) and a builder

    make(wm, codec, cfg) -> plan
    plan(now: Situation, key) -> action

``make`` runs once, at trace time, with the world model, the codec and the planner's
config; ``plan`` runs inside the meta-test's one ``lax.scan``, per task (the rollout is
vmapped over tasks and sharded over devices), so it must be pure and jittable. ``now``
holds everything a real step offers: the real context cache (already holding the current
state token), the policy head there and the action the policy takes, the step, the steps
left in the episode, and the ``Scorer`` the rollout chose for imagined steps (the paper's
predicted reward unless the in-context look-ups of ``planning.lookups`` are on).

A planner that reads ``now.scorer`` declares ``uses_scorer=True``; the look-ups are refused
for one that does not, where they would do nothing.

The rollout (``dicp_jax.evaluate``) decides *when* a planner's action replaces the
policy's (``plan_start``, ``before_reward``, ``plan_confidence``), narrowed by the steps a
planner declares it acts on (``Planner.acts``); a planner only decides *which* action. Adding
a planner is a new module with its config and ``make`` plus one ``register`` line in
``planning/__init__.py`` (tests may register one of their own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from dicp_jax.config import Registry
from dicp_jax.planning.world_model import WorldModel


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """Base of every planner's config: frozen and hashable, because it is a static part of
    the compiled meta-test. A planner without settings may use it as is."""

    def validate(self) -> None:
        """Raise ``ConfigError`` on a value the planner cannot run with."""


class Scorer(NamedTuple):
    """How a search values imagined steps. The rollout picks it (``planning.lookups``), so a
    planner that searches applies the look-ups without knowing them.

    - ``init(n, depth)``: per-candidate state, leading axis ``n`` (``()`` if none);
    - ``reward(obs [N, D], predicted [N]) -> reward [N]``: the reward an imagined arrival at
      ``obs`` gets (it is summed along the plan and fed to the next imagined state token);
    - ``score(parents, obs [N, D], value [N], d) -> (score [N], children)``: children's
      scores given their parents' state (leading ``N``), their imagined observations, their
      ``value`` (the rewards summed along the plan so far) and the imagined depth ``d``.
    """

    init: Callable[[int, int], Any]
    reward: Callable[[jax.Array, jax.Array], jax.Array]
    score: Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


# The paper's: an imagined plan is worth its predicted rewards, summed.
PREDICTED_REWARD = Scorer(init=lambda n, depth: (),
                          reward=lambda obs, predicted: predicted,
                          score=lambda parents, obs, value, d: (value, parents))


class Situation(NamedTuple):
    """What a planner sees at one real step of one task."""

    cache: Any  # the real context cache; it already holds the current state token
    action_logits: jax.Array  # [codec.action.head_size]: the policy head at that token
    policy_action: jax.Array  # the policy's action there (sampled, or its mode if greedy)
    step: jax.Array  # int32 []: the current state token's absolute step
    steps_left: jax.Array  # int32 [] >= 1: real steps left in the episode (caps imagination)
    scorer: Scorer  # how to value imagined steps (the paper's unless look-ups are on)


PlanFn = Callable[[Situation, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Planner:
    name: str
    config: type  # a frozen PlanConfig subclass; ``config()`` is the planner's default
    make: Callable[[WorldModel, Any, Any], PlanFn]  # (wm, codec, cfg) -> plan
    summary: str  # one line for ``dicp list planners`` and result notes
    uses_scorer: bool = False  # plan() reads ``now.scorer``, so the look-ups can apply
    # (cfg, steps_left int32 []) -> bool []: the steps this planner acts on at all (None:
    # wherever the rollout puts it in charge); elsewhere the policy acts and no search runs.
    acts: Callable[[Any, jax.Array], jax.Array] | None = None


PLANNERS = Registry("planner")
get, names, unregister = PLANNERS.get, PLANNERS.names, PLANNERS.unregister


def register(planner: Planner) -> Planner:
    """Make ``planner`` available by name to ``EvalConfig``, the CLI and experiment rows."""
    if not (isinstance(planner.config, type) and issubclass(planner.config, PlanConfig)):
        raise TypeError(f"planner {planner.name!r}: config must be a PlanConfig subclass")
    return PLANNERS.register(planner.name, planner)


__all__ = ["PREDICTED_REWARD", "PlanConfig", "PlanFn", "Planner", "Scorer", "Situation",
           "get", "names", "register", "unregister"]
