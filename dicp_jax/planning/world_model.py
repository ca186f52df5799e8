"""The planners' and the rollout's view of a model: three pure functions over a cache.

    init_cache(length)                    -> cache            (empty)
    decode(tokens[T], caches=(c1, ...))   -> (Heads[T], entries[T])
    write(cache, entries, tokens, slots)  -> cache

``decode`` runs new tokens against any number of caches (attended jointly); ``write``
stores their entries at the given slots. The real Transformer implements this with a
key/value cache (each new token costs only itself); the *uncached* adapter keeps raw tokens
and re-runs the full context on every call (the paper code's cost model, kept to measure the
cache's benefit); ``dicp_jax.testing.oracle`` puts the true dynamics behind the same
interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dicp_jax.model import EMPTY_STEP, Heads, Tokens, init_cache, token_pos, write_cache


class WorldModel(NamedTuple):
    init_cache: Callable[[int], Any]
    decode: Callable[[Tokens, tuple], tuple[Heads, Any]]
    write: Callable[[Any, Any, Tokens, jax.Array], Any]


def cached(model: Any, params: Any) -> WorldModel:
    """Incremental decoding with the model's key/value cache."""

    def decode(tokens: Tokens, caches: tuple) -> tuple[Heads, Any]:
        return model.apply({"params": params}, tokens, caches=caches, deterministic=True)

    def write(cache: Any, new_kv: Any, tokens: Tokens, slots: jax.Array) -> Any:
        return write_cache(cache, new_kv, tokens.step, token_pos(tokens), slots)

    return WorldModel(lambda length: init_cache(model.cfg, length), decode, write)


def empty_tokens(length: int, codec: Any) -> Tokens:
    """A buffer of ``length`` invisible tokens (``step = EMPTY_STEP``) in the codec's dtypes."""
    return Tokens(
        kind=jnp.zeros((length,), jnp.int32),
        obs=jnp.zeros((length, codec.obs.dim), codec.obs.dtype),
        prev_reward=jnp.zeros((length,), jnp.float32),
        first=jnp.zeros((length,), bool),
        action=jnp.zeros((length, *codec.action.shape), codec.action.dtype),
        step=jnp.full((length,), EMPTY_STEP, jnp.int32),
    )


def write_tokens(buffer: Tokens, tokens: Tokens, slots: jax.Array) -> Tokens:
    return jax.tree.map(lambda b, t: b.at[slots].set(t.astype(b.dtype)), buffer, tokens)


def uncached(model: Any, params: Any) -> WorldModel:
    """Re-run the whole visible context for every new token batch (no key/value reuse).

    The same visibility rule applies because the model masks by each token's step and
    position, not by its index, so a ring buffer's unordered tokens are a valid input. The
    two agree exactly while the context fits the window; past it, cached keys of old tokens
    still carry their own earlier context (a sliding-window model, as in training on
    sequences longer than the window) whereas re-running sees only the window's tokens.
    """

    def decode(tokens: Tokens, caches: tuple) -> tuple[Heads, Any]:
        seq = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *caches, tokens)
        heads, _ = model.apply({"params": params}, seq, caches=(), deterministic=True)
        n = tokens.step.shape[0]
        return jax.tree.map(lambda x: x[-n:], heads), tokens

    def write(buffer: Tokens, entries: Tokens, tokens: Tokens, slots: jax.Array) -> Tokens:
        return write_tokens(buffer, entries, slots)

    return WorldModel(lambda length: empty_tokens(length, model.codec), decode, write)


__all__ = ["WorldModel", "cached", "empty_tokens", "uncached", "write_tokens"]
