"""One causal Transformer for Algorithm Distillation (AD) and DICP.

Token layout: two tokens per transition t (o: observation, r: reward, a: action)::

    step       t=0              t=1              t=2           ...
    token      S0     A0        S1     A1        S2     A2
    content    o0,0,F a0        o1,r0,f1 a1      o2,r1,f2 a2
    position   0      1         2      3         4      5        (pos = 2*step + kind)
    predicts   a0     r0,o0',G0 a1     r1,o1',G1 a2     r2,o2',G2

S = state token (observation, previous reward, ``first`` = episode start flag), A = action
token. Every state token is an imitation target (the next action) and every action token a
dynamics target (reward r_t, true next observation o_t' and return-to-go G_t), so one window
of n transitions gives n targets of each kind instead of the one target of the paper's code.
At an episode boundary the next state token carries the reset observation with first=True,
so the model never confuses it with o_t'. Extending a context by one step = two new tokens.

Positions use rotary embeddings (relative), and attention follows one *visibility rule*:
query (step s_q, pos p_q) sees key (s_k, p_k) iff p_k <= p_q and s_k > s_q - n_transit (and
the key is not an empty cache slot). Training windows are plain causal windows under this
rule; at inference keys/values live in ring-buffer caches (``KVCache``, RoPE already applied)
of >= 2 * n_transit slots, and decoding token by token reproduces exactly the windowed
forward pass over the same steps. (As with any sliding-window attention, cached keys of
deeper layers carry information from up to n_layers * (n_transit - 1) steps back; training
on sequences of several windows, ``TrainConfig.seq_windows``, shows the model such keys.)
Several caches can be attended jointly (one softmax), e.g. a shared real-context cache plus a
small per-beam cache of a planner.

The module works on ONE sequence ``[T]``; batch with ``jax.vmap`` (caches may be shared via
``in_axes=None``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
EMPTY_STEP = -(2**30)  # step of an unused cache slot: never visible


class Tokens(NamedTuple):  # leading shape [..., T]
    kind: Array  # int32 [T]: 0 state token, 1 action token
    obs: Array  # [T, obs_dim] (state tokens; ignored on action tokens), codec.obs.dtype
    prev_reward: Array  # float32 [T] (state tokens)
    first: Array  # bool [T] (state tokens): first step of an episode
    action: Array  # [T] or [T, action_dim] (action tokens), the codec's action values
    step: Array  # int32 [T]: absolute transition index; position = 2*step + kind


class KVCache(NamedTuple):
    k: Array  # [n_layers, L, n_heads, d_head] keys (RoPE already applied at their pos)
    v: Array  # [n_layers, L, n_heads, d_head]
    step: Array  # int32 [L]; EMPTY_STEP for unused slots
    pos: Array  # int32 [L]


class NewKV(NamedTuple):
    k: Array  # [n_layers, T, n_heads, d_head] (RoPE applied)
    v: Array  # [n_layers, T, n_heads, d_head]


class Heads(NamedTuple):  # each read through its codec part (mode, sample, loss)
    # "logits" by history: for a continuous part, its head's raw outputs (e.g. mean, logvar)
    action_logits: Array  # [T, codec.action.head_size] (meaningful on state tokens)
    reward_logits: Array  # [T, codec.reward.head_size] (meaningful on action tokens)
    obs_logits: Array  # [T, codec.obs.head_size]       (action tokens)
    rtg: Array  # [T] predicted return-to-go in reward units (action tokens)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Paper sizes for the Darkroom family (n_transit 200 for Key-to-Door / Permuted)."""

    n_transit: int = 80  # context length in transitions (2 tokens each)
    width: int = 32
    n_layers: int = 4
    n_heads: int = 4
    mlp: int = 128
    dropout: float = 0.1
    attn_dropout: float = 0.1
    rope_base: float = 10000.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32

    def validate(self) -> None:
        from dicp_jax.config import ConfigError

        if self.width % self.n_heads or (self.width // self.n_heads) % 2:
            raise ConfigError(f"width={self.width} must split into n_heads={self.n_heads} "
                              "heads of even size (RoPE rotates pairs)")
        for k in ("n_transit", "width", "n_layers", "n_heads", "mlp"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0):
            raise ConfigError("dropout and attn_dropout must be in [0, 1)")

    @property
    def d_head(self) -> int:
        return self.width // self.n_heads


# -- cache helpers ------------------------------------------------------------------------------
def init_cache(cfg: ModelConfig, length: int) -> KVCache:
    shape = (cfg.n_layers, length, cfg.n_heads, cfg.d_head)
    return KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32),
                   jnp.full((length,), EMPTY_STEP, jnp.int32), jnp.zeros((length,), jnp.int32))


def ring_slots(pos: Array, length: int) -> Array:
    return jnp.asarray(pos) % length


def write_cache(cache: KVCache, new_kv: NewKV, tokens_step: Array, tokens_pos: Array,
                slots: Array) -> KVCache:
    """Write T new keys/values into ``slots`` [T] (e.g. ``ring_slots(pos, L)``)."""
    return KVCache(cache.k.at[:, slots].set(new_kv.k.astype(cache.k.dtype)),
                   cache.v.at[:, slots].set(new_kv.v.astype(cache.v.dtype)),
                   cache.step.at[slots].set(tokens_step.astype(jnp.int32)),
                   cache.pos.at[slots].set(tokens_pos.astype(jnp.int32)))


def token_pos(tokens: Tokens) -> Array:
    return 2 * tokens.step.astype(jnp.int32) + tokens.kind.astype(jnp.int32)


def visible(q_step: Array, q_pos: Array, k_step: Array, k_pos: Array, n_transit: int) -> Array:
    """The visibility rule as a bool mask [Tq, Lk]."""
    q_step, q_pos = q_step[:, None], q_pos[:, None]
    k_step, k_pos = k_step[None, :], k_pos[None, :]
    return (k_pos <= q_pos) & (k_step > q_step - n_transit) & (k_step != EMPTY_STEP)


def rope(x: Array, pos: Array, base: float) -> Array:
    """Rotary embedding of x [T, H, D] at integer positions [T] (rotate-half convention)."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    ang = pos.astype(jnp.float32)[:, None] * freq  # [T, half]
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def masked_attention(q: Array, keys: list[Array], vals: list[Array], mask: Array,
                     drop) -> Array:
    """One softmax of q [T, H, D] over several key/value groups ([L_i, H, D] each, e.g.
    shared caches then the new tokens) where ``mask`` [T, sum L_i]. The groups are scored
    one by one and only their scores are joined: concatenating the keys would copy a shared
    cache once per beam and candidate when this runs vmapped, while a shared group's scores
    are one matmul over all of them."""
    dt = q.dtype
    logits = jnp.concatenate([jnp.einsum("thd,lhd->htl", q, kk.astype(dt)) for kk in keys],
                             -1).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    logits = jnp.where(mask[None], logits, jnp.finfo(jnp.float32).min)
    att = drop(jax.nn.softmax(logits, axis=-1)).astype(dt)
    bounds = np.cumsum([0] + [kk.shape[0] for kk in keys])
    return sum(jnp.einsum("htl,lhd->thd", att[..., lo:hi], vv.astype(dt))
               for lo, hi, vv in zip(bounds[:-1], bounds[1:], vals, strict=True))


def banded_attention(q: Array, k: Array, v: Array, step: Array, pos: Array, n_transit: int,
                     block: int, drop) -> Array:
    """The visibility rule's attention over one contiguous window, computed only where it
    can be non-zero: query i (position i) sees keys at positions in [i - 2 * n_transit, i]
    at most, so queries in blocks of ``block`` tokens attend to their own block plus the
    ``2 * n_transit`` keys before it: T x (block + 2 n_transit) scores instead of T x T,
    the same softmax over the same visible keys (masked ones get exactly zero weight in
    both). Why: training sequences of several windows spent most of their attention on
    keys the rule masks. q, k, v [T, H, D] -> [T, H, D]; needs ``2 * n_transit % block
    == 0`` and token i at position i (a training window)."""
    t, h, d = q.shape
    span = 2 * n_transit
    chex.assert_equal(span % block, 0)
    nb = -(-t // block)  # query blocks
    tail = nb * block - t
    pad = lambda a, fill: jnp.concatenate(
        [jnp.full((span, *a.shape[1:]), fill, a.dtype), a,
         jnp.full((tail, *a.shape[1:]), fill, a.dtype)], 0)
    # key block b covers padded rows [b * block, b * block + span + block)
    blocks = lambda a: jnp.concatenate(
        [a[m * block:(m + nb) * block].reshape(nb, block, *a.shape[1:])
         for m in range(span // block + 1)], 1)  # [nb, block + span, ...]
    kb, vb = blocks(pad(k, 0)), blocks(pad(v, 0))
    ks, kp = blocks(pad(step, EMPTY_STEP)), blocks(pad(pos, 0))
    qp = lambda a, fill: jnp.concatenate([a, jnp.full((tail, *a.shape[1:]), fill, a.dtype)])
    qb = qp(q, 0).reshape(nb, block, h, d)
    q_step, q_pos = qp(step, 0).reshape(nb, block), qp(pos, -1).reshape(nb, block)
    mask = jax.vmap(visible, (0, 0, 0, 0, None))(q_step, q_pos, ks, kp, n_transit)
    logits = jnp.einsum("bqhd,bkhd->bhqk", qb, kb).astype(jnp.float32) / jnp.sqrt(d)
    logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
    att = drop(jax.nn.softmax(logits, axis=-1)).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", att, vb)  # [nb, block, H, D]
    return out.reshape(nb * block, h, d)[:t]


# -- modules --------------------------------------------------------------------------------------
class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, pos, step, caches_k, caches_v, key_step, key_pos, deterministic,
                 branches: bool = False, band: int = 0):
        """x [T, W]; caches_k/v: this layer's cached [L, H, D] arrays (may be empty);
        ``branches``: the T new tokens see the caches and themselves, not each other;
        ``band``: with no caches, attend in query blocks of this size over the keys that
        the visibility rule can reach (``banded_attention``; token i must have position i)."""
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        h = nn.LayerNorm(dtype=dt)(x)
        qkv = nn.DenseGeneral((3, cfg.n_heads, cfg.d_head), dtype=dt, name="qkv")(h)
        q, k, v = (qkv[:, i] for i in range(3))  # [T, H, D]
        q, k = rope(q, pos, cfg.rope_base), rope(k, pos, cfg.rope_base)
        drop = lambda att: nn.Dropout(cfg.attn_dropout)(att, deterministic=deterministic)
        if band and not caches_k:
            out = banded_attention(q, k, v, step, pos, cfg.n_transit, band, drop)
        else:
            mask = visible(step, pos, key_step, key_pos, cfg.n_transit)
            if branches:
                n_new = x.shape[0]
                own = jnp.eye(n_new, dtype=bool)
                mask = jnp.concatenate([mask[:, :-n_new], mask[:, -n_new:] & own], axis=1)
            out = masked_attention(q, [*caches_k, k], [*caches_v, v], mask, drop)
        out = nn.DenseGeneral(cfg.width, axis=(-2, -1), dtype=dt, name="proj")(out)
        x = x + nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        h = nn.LayerNorm(dtype=dt)(x)
        h = nn.Dense(cfg.mlp, dtype=dt)(h)
        h = nn.Dense(cfg.width, dtype=dt)(nn.gelu(h))
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        return x, k, v


class DICPTransformer(nn.Module):
    """Pre-norm causal Transformer with policy, reward, next-obs and return-to-go heads."""

    cfg: ModelConfig
    codec: object

    def embed(self, tokens: Tokens) -> Array:
        """Each token's content through its codec part, plus its kind (and, on state
        tokens, the episode-start flag)."""
        cfg, codec, dt = self.cfg, self.codec, jnp.dtype(self.cfg.dtype)
        w = cfg.width
        e_obs = codec.obs.embed(tokens.obs, w)
        e_rew = codec.reward.embed(tokens.prev_reward, w)
        e_first = nn.Embed(2, w, name="first_embed")(tokens.first.astype(jnp.int32))
        e_act = codec.action.embed(tokens.action, w)
        e_kind = nn.Embed(2, w, name="kind_embed")(tokens.kind.astype(jnp.int32))
        is_state = (tokens.kind == 0)[..., None]
        return (jnp.where(is_state, e_obs + e_rew + e_first, e_act) + e_kind).astype(dt)

    @nn.compact
    def __call__(self, tokens: Tokens, caches: tuple[KVCache, ...] = (),
                 deterministic: bool = True, branches: bool = False,
                 band: int = 0) -> tuple[Heads, NewKV]:
        """``band`` > 0: ``tokens`` are one contiguous window (token i at position i), and
        attention runs in query blocks of ``band`` tokens (``banded_attention``)."""
        cfg, codec = self.cfg, self.codec
        step = tokens.step.astype(jnp.int32)
        pos = token_pos(tokens)
        key_step = jnp.concatenate([c.step for c in caches] + [step])
        key_pos = jnp.concatenate([c.pos for c in caches] + [pos])
        x = nn.Dropout(cfg.dropout)(self.embed(tokens), deterministic=deterministic)
        ks, vs = [], []
        for i in range(cfg.n_layers):
            x, k, v = Block(cfg, name=f"block_{i}")(
                x, pos, step, [c.k[i] for c in caches], [c.v[i] for c in caches],
                key_step, key_pos, deterministic, branches, band)
            ks.append(k)
            vs.append(v)
        h = nn.LayerNorm(name="final_norm")(x).astype(jnp.float32)
        heads = Heads(
            action_logits=nn.Dense(codec.action.head_size, name="action_head")(h),
            reward_logits=nn.Dense(codec.reward.head_size, name="reward_head")(h),
            obs_logits=nn.Dense(codec.obs.head_size, name="obs_head")(h),
            rtg=nn.Dense(1, name="rtg_head")(h)[..., 0] * codec.rtg_scale,
        )
        return heads, NewKV(jnp.stack(ks), jnp.stack(vs))


def attention_block(n_tokens: int, n_transit: int, target: int = 45) -> int:
    """Query block size for ``banded_attention`` on a window of ``n_tokens``: the divisor
    of the reachable span (``2 * n_transit``) nearest ``target`` tokens (smaller blocks
    skip more masked keys but make more, smaller matmuls; ``benchmarks/bench_speedup.py``
    and the research log have the measured trade-off), or 0 (full attention) where the
    band would not be shorter than the sequence."""
    span = 2 * n_transit
    block = min((b for b in range(1, span + 1) if span % b == 0),
                key=lambda b: (abs(b - target), -b))
    return block if block + span < n_tokens else 0


def init_params(model: DICPTransformer, key: Array, n_tokens: int | None = None):
    """Parameters from a dummy window (shapes do not depend on its length)."""
    n = n_tokens or 2
    codec = model.codec
    dummy = Tokens(kind=jnp.arange(n, dtype=jnp.int32) % 2,
                   obs=jnp.zeros((n, codec.obs_dim), codec.obs.dtype),
                   prev_reward=jnp.zeros((n,), jnp.float32), first=jnp.zeros((n,), bool),
                   action=jnp.zeros((n, *codec.action.shape), codec.action.dtype),
                   step=jnp.arange(n, dtype=jnp.int32) // 2)
    init = lambda k: model.init({"params": k}, dummy, deterministic=True)["params"]
    return jax.jit(init)(key)  # one compile instead of hundreds of eager ops


def state_token(codec, obs: jax.Array, prev_reward: jax.Array, first: jax.Array,
                step: jax.Array) -> Tokens:
    """One state token ``[1]``: observation, previous reward, episode-start flag (its action
    field is an unused placeholder)."""
    return Tokens(
        kind=jnp.zeros((1,), jnp.int32),
        obs=jnp.asarray(obs).astype(codec.obs.dtype)[None],
        prev_reward=jnp.asarray(prev_reward, jnp.float32)[None],
        first=jnp.asarray(first, bool)[None],
        action=jnp.zeros((1, *codec.action.shape), codec.action.dtype),
        step=jnp.asarray(step, jnp.int32)[None],
    )


def action_token(codec, action: jax.Array, step: jax.Array) -> Tokens:
    """One action token ``[1]`` (its observation fields are unused placeholders)."""
    return Tokens(
        kind=jnp.ones((1,), jnp.int32),
        obs=jnp.zeros((1, codec.obs_dim), codec.obs.dtype),
        prev_reward=jnp.zeros((1,), jnp.float32),
        first=jnp.zeros((1,), bool),
        action=jnp.asarray(action).astype(codec.action.dtype)[None],
        step=jnp.asarray(step, jnp.int32)[None],
    )


def branch_heads(model: DICPTransformer, params, tokens: Tokens, kv: NewKV, actions: Array,
                 key: Array, deterministic: bool = True) -> Heads:
    """Heads of one *branch* action token per transition of a sequence: ``actions[t]``
    [n] taken at S_t, seeing the sequence up to S_t (not A_t, nothing later) and itself: the
    question a planner asks at step t, here for a whole sequence at once (counterfactual
    dynamics targets, their validation). ``kv`` is the sequence's own ``NewKV``; A_t is
    hidden by moving action tokens one position later in the mask only (their keys keep
    their RoPE positions). One pass: the n branch tokens do not see each other
    (``branches``). Returns Heads with leading [n]."""
    pos = token_pos(tokens)
    cache = KVCache(kv.k, kv.v, tokens.step.astype(jnp.int32), pos + tokens.kind)
    branch = jax.vmap(action_token, (None, 0, 0))(model.codec, actions, tokens.step[0::2])
    branch = jax.tree.map(lambda a: a[:, 0], branch)  # n tokens [n, ...]
    return model.apply({"params": params}, branch, caches=(cache,), deterministic=deterministic,
                       branches=True, rngs={"dropout": key})[0]


def token_dtype(x: Array) -> Array:
    """Token storage: integer values (cells, action indices) as int32, the rest float32."""
    return x.astype(jnp.int32 if jnp.issubdtype(x.dtype, jnp.integer) else jnp.float32)


def interleave(obs: Array, prev_reward: Array, first: Array, action: Array,
               step: Array) -> Tokens:
    """Per-transition arrays [n, ...] -> Tokens [2n] (S0 A0 S1 A1 ...)."""
    n = action.shape[0]
    two = lambda a: jnp.repeat(a, 2, axis=0)
    return Tokens(kind=jnp.tile(jnp.array([0, 1], jnp.int32), n),
                  obs=two(obs), prev_reward=two(prev_reward.astype(jnp.float32)),
                  first=two(first.astype(bool)), action=two(token_dtype(action)),
                  step=two(step.astype(jnp.int32)))


__all__ = ["EMPTY_STEP", "DICPTransformer", "Heads", "KVCache", "ModelConfig", "NewKV", "Tokens",
           "action_token", "attention_block", "banded_attention", "branch_heads", "init_cache",
           "init_params", "interleave", "masked_attention", "ring_slots", "state_token",
           "token_dtype", "token_pos", "visible", "write_cache"]
