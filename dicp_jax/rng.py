"""Per-task randomness: one key per task from a base key and the task's global index.

Folding in the index (not splitting by batch position) makes a task's randomness the same
whether it runs alone, in any batch, or on any device -- for PPO collection and meta-test.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np


def task_keys(key: jax.Array, task_index: Iterable[int]) -> jax.Array:
    """``[N]`` task indices -> ``[N, 2]`` keys, ``fold_in(key, index)`` each."""
    idx = jnp.asarray(np.asarray(task_index, dtype=np.uint32))
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
