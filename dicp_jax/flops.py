"""Multiply-adds per action of each method's meta-test, counted as the compiled program
executes them, the same way for every method (the unit the paper's Table 7 figures match).

Counted: the backbone's matmuls per token (q/k/v and output projections ``4 W^2``, the MLP
``2 W mlp``) and attention against every key the call attends over (``2 W keys``, masked
keys included, as dense masked attention computes them), per layer. Embeddings, norms and
heads are left out (a few percent at these sizes). A search counts every candidate it
evaluates, padded beams and levels past the episode's end included, because the fixed-shape
program runs them.

- AD: a real step decodes 2 tokens against the ``2 n`` slot cache; an imagined step 1
  token against the cache plus the beam's ``2 D`` slots (the key/value cache).
- DPT: every call is a full pass over ``n + 1`` tokens (the query leads, nothing is cached).
- IDT: a real step runs Reviewing-Decisions (``c`` tokens), Making-Decisions (``3 n / c``)
  and Decisions-to-Go (``4 c``) (the one-jit agent runs all three every step and keeps
  their outputs at segment boundaries); an imagined step re-runs Decisions-to-Go over the
  segment plus the imagined tokens (``4 c + 4 D``).
"""

from __future__ import annotations

from typing import Any

from dicp_jax.model import ModelConfig

IDT_C = 10  # low-level steps per decision (``methods.idt.C``)


def token_macs(cfg: ModelConfig, keys: int) -> int:
    """One token through the backbone, attending over ``keys`` keys."""
    w = cfg.width
    return cfg.n_layers * (4 * w * w + 2 * w * cfg.mlp + 2 * w * keys)


def pass_macs(cfg: ModelConfig, tokens: int, keys: int | None = None) -> int:
    return tokens * token_macs(cfg, tokens if keys is None else keys)


def search_calls(beam_size: int, depth: int, n_actions: int) -> tuple[int, int]:
    """(state-token decodes, action-token decodes) of the beam search as executed: the
    root's actions, then ``depth - 1`` levels of ``beam_size`` beams x (1 + actions)."""
    return (depth - 1) * beam_size, n_actions + (depth - 1) * beam_size * n_actions


def macs_per_action(method: str, cfg: ModelConfig, n_actions: int,
                    plan: Any = None, planned_share: float = 1.0) -> float:
    """Multiply-adds per real action; ``plan`` is a ``BeamConfig`` (beam search on a
    ``planned_share`` of the steps, every step by default) or None (the policy head alone).
    The policy head runs at every step either way."""
    n = cfg.n_transit
    if method == "ad":
        act = 2 * token_macs(cfg, 2 * n + 2)
    elif method == "dpt":
        act = pass_macs(cfg, n + 1)
    elif method == "idt":
        act = (pass_macs(cfg, IDT_C) + pass_macs(cfg, 3 * n // IDT_C)
               + pass_macs(cfg, 4 * IDT_C))
    else:
        raise ValueError(f"no cost model for method {method!r}")
    if plan is None:
        return act
    states, actions = search_calls(plan.beam_size, plan.depth, n_actions)
    if method == "ad":
        one = token_macs(cfg, 2 * n + 2 * plan.depth + 1)
    elif method == "dpt":
        one = pass_macs(cfg, n + 1)
    else:
        one = pass_macs(cfg, 4 * IDT_C + 4 * plan.depth)
    return act + planned_share * (states + actions) * one


__all__ = ["macs_per_action", "pass_macs", "search_calls", "token_macs"]
