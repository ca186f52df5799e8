"""Model contract: shapes, causality, and cache (ring buffer) equivalence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dicp_jax import codecs
from dicp_jax.codecs.base import Codec
from dicp_jax.codecs.grid import Categorical, ClassReward, GridCodecConfig, GridObs
from dicp_jax.config import ConfigError
from dicp_jax.model import (
    DICPTransformer,
    KVCache,
    ModelConfig,
    attention_block,
    branch_heads,
    init_cache,
    init_params,
    interleave,
    ring_slots,
    token_pos,
    write_cache,
)

CFG = ModelConfig(n_transit=6, width=16, n_layers=2, n_heads=2, mlp=32)
CODEC = Codec(obs=GridObs(grid_size=5), reward=ClassReward(), action=Categorical(5),
              rtg_scale=10.0)


def random_tokens(key, n: int, start: int = 0):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    obs = jax.random.randint(k1, (n, 2), 0, CODEC.obs.grid_size)
    rew = jax.random.bernoulli(k2, 0.3, (n,)).astype(jnp.float32)
    first = jax.random.bernoulli(k3, 0.2, (n,))
    act = jax.random.randint(k4, (n,), 0, CODEC.action.n)
    return interleave(obs, rew, first, act, jnp.arange(start, start + n))


class Jitted:
    """``model.apply`` under jit (eager flax applies compile hundreds of tiny ops)."""

    def __init__(self, model):
        self.model, self.cfg, self.codec = model, model.cfg, model.codec
        self._f = jax.jit(lambda p, t, c: model.apply(p, t, caches=c))

    def apply(self, variables, tokens, caches=()):
        return self._f(variables, tokens, tuple(caches))


@pytest.fixture(scope="module")
def setup():
    model = DICPTransformer(CFG, CODEC)
    params = init_params(model, jax.random.PRNGKey(0))
    return Jitted(model), params


def test_codec_roundtrip():
    codec = codecs.for_name("darkroom")
    assert codec.obs.head_size == 81 and codec.reward.head_size == 2 and codec.action.n == 5
    obs = jnp.array([[0, 0], [3, 7], [8, 8]])
    np.testing.assert_array_equal(codec.obs.to_class(obs), [0, 34, 80])
    np.testing.assert_array_equal(codec.obs.from_class(codec.obs.to_class(obs)), obs)
    np.testing.assert_array_equal(codec.reward.to_class(jnp.array([0.0, 1.0, 0.9])), [0, 1, 1])
    assert codec.reward.from_class(1) == 1.0
    # each part's mode reads its head: the argmax class as a value
    one_hot = jax.nn.one_hot(codec.obs.to_class(obs), 81) * 10
    np.testing.assert_array_equal(codec.obs.mode(one_hot), obs)
    assert int(codec.action.mode(jnp.array([0.0, 3.0, 1.0, 0.0, 0.0]))) == 1


def test_factored_obs_embedding_is_a_sum_over_coordinates(setup):
    """One vector per coordinate value (held-out goal cells share them with training goals);
    ``factored_obs=False`` keeps one vector per cell."""
    model, params = setup
    table = params["obs_embed"]["embedding"]
    assert table.shape == (2 * CODEC.obs.grid_size, CFG.width)
    # cell (3, 1) reads only the rows of x = 3 and y = 1: bumping x = 3 moves it, y = 4 not
    tok = interleave(jnp.array([[3, 1], [3, 4]]), jnp.zeros(2), jnp.zeros(2, bool),
                     jnp.zeros(2, jnp.int32), jnp.arange(2))
    bumped = {**params, "obs_embed": {"embedding": table.at[3].add(1.0)}}
    a, _ = model.apply({"params": params}, tok)
    b, _ = model.apply({"params": bumped}, tok)
    assert not np.allclose(a.action_logits[0], b.action_logits[0])  # (3, 1) moved
    bumped = {**params, "obs_embed": {"embedding": table.at[CODEC.obs.grid_size + 4].add(1.0)}}
    c, _ = model.apply({"params": bumped}, tok)
    np.testing.assert_array_equal(c.action_logits[0], a.action_logits[0])  # y=4: not (3, 1)
    per_cell = DICPTransformer(CFG, dataclasses.replace(CODEC, obs=GridObs(5, factored=False)))
    assert init_params(per_cell, jax.random.PRNGKey(0))["obs_embed"]["embedding"].shape == (
        CODEC.obs.head_size, CFG.width)


def test_obs_mix_adds_a_joint_term_to_the_coordinate_sum(setup):
    """A coordinate sum is additive, which let attention confuse cells sharing a coordinate;
    ``obs_mix`` adds an MLP of the joint coordinates on top. With its output layer zeroed
    the model is exactly the sum-only model with the same other parameters."""
    model, params = setup
    mixed = DICPTransformer(CFG, dataclasses.replace(CODEC, obs=GridObs(5, mix=True)))
    mix_params = init_params(mixed, jax.random.PRNGKey(0))
    assert set(mix_params) - set(params) == {"obs_mix_in", "obs_mix_out"}
    tok = random_tokens(jax.random.PRNGKey(5), 6)
    zeroed = {**params, **{k: mix_params[k] for k in ("obs_mix_in", "obs_mix_out")}}
    zeroed["obs_mix_out"] = jax.tree.map(jnp.zeros_like, zeroed["obs_mix_out"])
    base, _ = model.apply({"params": params}, tok)
    same, _ = mixed.apply({"params": zeroed}, tok)
    np.testing.assert_allclose(same.action_logits, base.action_logits, rtol=1e-5, atol=1e-6)
    live = {**zeroed, "obs_mix_out": mix_params["obs_mix_out"]}
    moved, _ = mixed.apply({"params": live}, tok)
    assert not np.allclose(moved.action_logits, base.action_logits)
    with pytest.raises(ConfigError, match="factored_obs"):
        GridCodecConfig(obs_mix=True, factored_obs=False).validate()


def test_shapes_and_dtype_variants(setup):
    model, params = setup
    tok = random_tokens(jax.random.PRNGKey(1), 7)
    heads, kv = model.apply({"params": params}, tok)
    assert heads.action_logits.shape == (14, 5)
    assert heads.reward_logits.shape == (14, 2)
    assert heads.obs_logits.shape == (14, 25)
    assert heads.rtg.shape == (14,)
    assert kv.k.shape == (CFG.n_layers, 14, CFG.n_heads, CFG.d_head)
    # batched via vmap, with dropout rngs
    toks = jax.tree.map(lambda a: jnp.stack([a, a]), tok)
    f = jax.jit(jax.vmap(lambda t, k: model.model.apply(
        {"params": params}, t, deterministic=False, rngs={"dropout": k})[0].obs_logits))
    out = f(toks, jax.random.split(jax.random.PRNGKey(2), 2))
    assert out.shape == (2, 14, 25) and not np.allclose(out[0], out[1])
    bf = DICPTransformer(ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"}), CODEC)
    hb, _ = Jitted(bf).apply({"params": params}, tok)
    np.testing.assert_allclose(hb.obs_logits, heads.obs_logits, atol=0.1)


def test_causality(setup):
    """Changing a future token never changes an earlier output."""
    model, params = setup
    tok = random_tokens(jax.random.PRNGKey(3), 10)
    base, _ = model.apply({"params": params}, tok)
    for cut in (0, 5, 11, 19):  # change every token at index >= cut
        other = random_tokens(jax.random.PRNGKey(100 + cut), 10)
        mixed = jax.tree.map(
            lambda a, b, c=cut: jnp.concatenate([a[:c], b[c:]]) if a.ndim else a, tok, other)
        mixed = mixed._replace(step=tok.step, kind=tok.kind)
        out, _ = model.apply({"params": params}, mixed)
        for a, b in zip(base, out, strict=True):
            np.testing.assert_allclose(a[:cut], b[:cut], atol=1e-5)
            if cut < 18:
                assert not np.allclose(a[cut:], b[cut:], atol=1e-5)


def test_window_limits_visibility(setup):
    """Each layer sees n_transit steps back, so step 0 cannot reach an output at step s once
    s > n_layers * (n_transit - 1) (sliding-window attention's receptive field)."""
    model, params = setup
    n = 14
    tok = random_tokens(jax.random.PRNGKey(4), n)
    base, _ = model.apply({"params": params}, tok)
    other = random_tokens(jax.random.PRNGKey(5), n)
    mixed = jax.tree.map(lambda a, b: jnp.concatenate([b[:2], a[2:]]), tok, other)
    out, _ = model.apply({"params": params}, mixed)
    start = 2 * (1 + CFG.n_layers * (CFG.n_transit - 1))
    np.testing.assert_allclose(base.obs_logits[start:], out.obs_logits[start:], atol=1e-5)


@pytest.mark.parametrize("n_steps,block", [(14, 2), (23, 3), (30, 4)])
def test_banded_attention_equals_full_attention(setup, n_steps, block):
    """Training's banded attention (query blocks over the keys the window rule can reach)
    gives the outputs and parameter gradients of full masked attention, for sequences of
    one to several windows and lengths that are not a multiple of the block. Tolerance:
    float32 rounding of a different summation order (relative 1e-4 on gradients)."""
    model, params = setup
    assert (2 * CFG.n_transit) % block == 0
    tok = random_tokens(jax.random.PRNGKey(7), n_steps)
    heads = jax.jit(lambda p, band: model.model.apply({"params": p}, tok, band=band)[0],
                    static_argnums=1)
    for a, b in zip(heads(params, 0), heads(params, block), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5)

    def grads(band):
        f = lambda p: sum(jnp.sum(jnp.sin(x)) for x in heads(p, band))
        return jax.jit(jax.grad(f))(params)

    for a, b in zip(jax.tree.leaves(grads(0)), jax.tree.leaves(grads(block)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))
    # the block a training window gets: a divisor of the reachable span, or full attention
    assert attention_block(2 * 400, 200) == 50 and attention_block(2 * 160, 80) == 40
    assert attention_block(2 * 80, 80) == 0  # one window: nothing to skip


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_ring_cache_matches_full_forward(setup, chunk):
    """Incremental decoding through a ring buffer smaller than the sequence (slots get
    overwritten) equals one windowed forward pass; ``chunk`` = tokens fed per call."""
    model, params = setup
    n = 17  # transitions; 34 tokens >> cache length 2 * n_transit = 12
    tok = random_tokens(jax.random.PRNGKey(6), n, start=1000)
    full, full_kv = model.apply({"params": params}, tok)
    cache = init_cache(CFG, 2 * CFG.n_transit)
    outs = []
    apply = lambda p, t, c: model.apply({"params": p}, t, caches=(c,))
    for i in range(0, 2 * n, chunk):
        t = jax.tree.map(lambda a, i=i: a[i:i + chunk], tok)
        heads, kv = apply(params, t, cache)
        outs.append(heads)
        pos = token_pos(t)
        cache = write_cache(cache, kv, t.step, pos, ring_slots(pos, cache.step.shape[0]))
    inc = jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
    for a, b in zip(full, inc, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    # the cache holds the last 12 tokens' keys exactly as the full pass produced them
    last = np.asarray(cache.pos).argsort()
    np.testing.assert_allclose(cache.k[:, last], full_kv.k[:, -12:], atol=1e-5)


def test_two_caches_attended_jointly(setup):
    """Splitting the context across two caches (shared + per-beam) changes nothing."""
    model, params = setup
    tok = random_tokens(jax.random.PRNGKey(7), 8)
    full, _ = model.apply({"params": params}, tok)
    ctx = jax.tree.map(lambda a: a[:10], tok)
    _, kv = model.apply({"params": params}, ctx)
    shared = write_cache(init_cache(CFG, 12), kv, ctx.step, token_pos(ctx),
                         ring_slots(token_pos(ctx), 12))
    mid = jax.tree.map(lambda a: a[10:12], tok)
    _, kv2 = model.apply({"params": params}, mid, caches=(shared,))
    beam = write_cache(init_cache(CFG, 4), kv2, mid.step, token_pos(mid), jnp.arange(2))
    rest = jax.tree.map(lambda a: a[12:], tok)
    out, _ = model.apply({"params": params}, rest, caches=(shared, beam))
    np.testing.assert_allclose(out.obs_logits, full.obs_logits[12:], atol=2e-5)
    assert isinstance(beam, KVCache)


def test_branch_heads_see_the_context_up_to_their_state_token(setup):
    """A branch token with the action actually taken is the real action token: same keys
    seen (S_0..S_t, A_0..A_(t-1)), same heads; with another action it differs."""
    model, params = setup
    tok = random_tokens(jax.random.PRNGKey(7), 9)
    heads, kv = model.apply({"params": params}, tok)
    key = jax.random.PRNGKey(0)
    same = branch_heads(model.model, params, tok, kv, tok.action[1::2], key)
    np.testing.assert_allclose(same.reward_logits, heads.reward_logits[1::2],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same.obs_logits, heads.obs_logits[1::2],
                               rtol=1e-5, atol=1e-5)
    other = branch_heads(model.model, params, tok, kv, (tok.action[1::2] + 1) % 5, key)
    assert not np.allclose(other.reward_logits, heads.reward_logits[1::2])
