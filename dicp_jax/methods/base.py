"""Imitation methods: what a method owns, and the registry that names them.

A method is a module with

- ``NAME``: its registry name (recorded with the run, via ``TrainConfig.method``);
- ``make_model(model_cfg, codec)``: the Flax model it trains (sharing the backbone code);
- ``window(data, task, stream, offset, n) -> (tokens, Targets)``: its batch layout, one
  training sequence of ``n`` transitions cut from the on-device histories (``data``);
- ``loss(model, params, tokens, targets, key, lam, deterministic, weight, cf_weight)``:
  its per-batch loss and metrics (imitation + ``lam`` x dynamics);

so that training and validation are method-agnostic. Meta-test agents read the model's
policy and dynamics heads through the codec; a method with another token layout brings
its own agent too. A new method is a new module plus a registry line.
"""

from __future__ import annotations

from types import ModuleType

from dicp_jax.config import Registry

REQUIRED = ("NAME", "make_model", "window", "loss")
METHODS = Registry("method")
get, names, unregister = METHODS.get, METHODS.names, METHODS.unregister


def register(method: ModuleType) -> ModuleType:
    missing = [a for a in REQUIRED if not hasattr(method, a)]
    if missing:
        raise TypeError(f"method {getattr(method, 'NAME', method)} lacks {missing}")
    return METHODS.register(method.NAME, method)
