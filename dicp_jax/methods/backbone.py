"""The shared backbone for layouts that run whole sequences (DPT's leading query token,
IDT's three modules): ``dicp_jax.model.Block`` layers over one sequence with explicit
positions and a validity mask, so fixed-size buffers (right-padded or partly empty) give
the outputs of their valid prefix exactly, as the one-jit meta-test needs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dicp_jax.model import EMPTY_STEP, Block, ModelConfig

Array = jax.Array


class PartEmbed(nn.Module):
    """A codec part's embedding in its own parameter scope, so one model can embed the same
    kind of value twice with separate parameters (DPT's s and s', IDT's s in three modules)."""

    part: Any
    width: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.part.embed(x, self.width)


class Stack(nn.Module):
    """``cfg.n_layers`` causal blocks and a final norm over ``x [T, W]``: token ``i`` sees
    the valid tokens ``j`` with ``pos[j] <= pos[i]`` (RoPE at ``pos``). The attention window
    is the whole sequence (``cfg.n_transit`` only bounds the AD cache, unused here)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array, pos: Array, valid: Array,
                 deterministic: bool = True) -> Array:
        step = jnp.where(valid, 0, EMPTY_STEP).astype(jnp.int32)  # [T]
        pos = pos.astype(jnp.int32)
        x = nn.Dropout(self.cfg.dropout)(x, deterministic=deterministic)
        for i in range(self.cfg.n_layers):
            x, _, _ = Block(self.cfg, name=f"block_{i}")(x, pos, step, [], [], step, pos,
                                                          deterministic)
        return nn.LayerNorm(name="final_norm")(x).astype(jnp.float32)


__all__ = ["PartEmbed", "Stack"]
