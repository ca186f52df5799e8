"""DPT (Decision-Pretrained Transformer) with DICP's dynamics heads, as the paper's code does it.

Imitate the family oracle's *optimal* action for a query state given a context of the
source learner's transitions (not the learner's own next action, as AD does), and, with
``lam > 0`` (DICP-DPT), predict the reward and next observation of a query action.

Token layout of one sequence (``n = n_transit``; paper code, query first as original DPT)::

    index    0        1 ... n-1                          n
    token    q        c_1 ... c_{n-1}                    qa
    content  s_q      (s, a, r, s') of n-1 transitions   a_q (the learner's action at s_q)
    predicts a*(s_q)  a*(s_q) after each prefix          r_q, s'_q   (DICP-DPT)

A context token sums separate embeddings of s, a, r and s' (the code: one linear map of
their concatenation, which is that sum); its content goes through the env's codec, so the
grid codec's factored cell embedding replaces the code's raw coordinates. The one label
a*(s_q) is trained at every prefix position 1..n-1, as the code does ("all prefixes");
the query-only position 0 is not trained (the code reads it at the meta-test's first step
all the same). The dynamics targets exist once per sequence (at qa): a context token
holds r and s' as inputs, so this layout cannot densify them. No return-to-go head (the
code has none).

Meta-test (``make_agent``): the context is a sliding window of the last n-1 real
transitions across episodes, s' at an episode end being the terminal observation (the
code's evaluation; its training data hold the reset one there, ours the terminal one, so
training and evaluation agree). Every action is one full pass over ``[q, context]``: the
layout puts the query first, so nothing can be cached. DICP-DPT plans with the same beam
search as DICP-AD through ``world_model``, which lays each imagined step out as the code's
planner does (imagined transitions appended to the sliding window, the imagined state as
the new query) and re-runs the full sequence per candidate, as the code does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dicp_jax.config import ConfigError
from dicp_jax.data import Targets, TrainData
from dicp_jax.methods.backbone import PartEmbed, Stack
from dicp_jax.methods.base import Agent, Step, TaskInfo, require_one_window
from dicp_jax.model import Heads, ModelConfig, Tokens, token_dtype
from dicp_jax.planning.world_model import WorldModel, empty_tokens, write_tokens

NAME = "dpt"
LAYOUT = "dpt"  # its own: validated through ``stats``
QUERY, CONTEXT, QUERY_ACTION = 0, 1, 2


class DPTTokens(NamedTuple):  # leading shape [..., T]
    kind: jax.Array  # int32 [T]: QUERY, CONTEXT or QUERY_ACTION
    obs: jax.Array  # [T, obs_dim]: s_q (query) or s (context)
    action: jax.Array  # [T] or [T, action_dim]: a (context) or a_q (query action)
    reward: jax.Array  # float32 [T]: r (context)
    next_obs: jax.Array  # [T, obs_dim]: s' (context)
    pos: jax.Array  # int32 [T]: RoPE position
    valid: jax.Array  # bool [T]: padding slots are invisible


class DPTTransformer(nn.Module):
    """The shared backbone over DPT's layout, with DICP's reward and next-obs heads."""

    cfg: ModelConfig
    codec: Any

    @nn.compact
    def __call__(self, tokens: DPTTokens, deterministic: bool = True) -> Heads:
        codec, w = self.codec, self.cfg.width
        e_s = PartEmbed(codec.obs, w, name="state")(tokens.obs)
        e_a = PartEmbed(codec.action, w, name="action")(tokens.action)
        e_r = PartEmbed(codec.reward, w, name="reward")(tokens.reward)
        e_s2 = PartEmbed(codec.obs, w, name="next_state")(tokens.next_obs)
        e_qa = PartEmbed(codec.action, w, name="query_action")(tokens.action)
        kind = tokens.kind[..., None]
        x = jnp.where(kind == QUERY, e_s, jnp.where(kind == CONTEXT, e_s + e_a + e_r + e_s2,
                                                    e_qa))
        x = x + nn.Embed(3, w, name="kind_embed")(tokens.kind)
        h = Stack(self.cfg, name="backbone")(x.astype(jnp.dtype(self.cfg.dtype)), tokens.pos,
                                              tokens.valid, deterministic)
        return Heads(
            action_logits=nn.Dense(codec.action.head_size, name="action_head")(h),
            reward_logits=nn.Dense(codec.reward.head_size, name="reward_head")(h),
            obs_logits=nn.Dense(codec.obs.head_size, name="obs_head")(h),
            rtg=jnp.zeros(h.shape[:-1], jnp.float32),
        )


def make_model(model_cfg: ModelConfig, codec) -> DPTTransformer:
    return DPTTransformer(model_cfg, codec)


def init_params(model: DPTTransformer, key: jax.Array):
    blank = _blank(model.codec, model.cfg.n_transit + 1)
    return jax.jit(lambda k: model.init({"params": k}, blank)["params"])(key)


def check_config(train_cfg, model_cfg: ModelConfig) -> None:
    """DPT's sequence is one window of n_transit transitions: AD's multi-window training
    options do not apply."""
    require_one_window(NAME, train_cfg)
    if model_cfg.n_transit < 2:
        raise ConfigError("DPT needs n_transit >= 2 (a query and a context)")


# -- data -----------------------------------------------------------------------------------------
def prepare_data(data: TrainData, env, tasks) -> TrainData:
    """Add the oracle's action at every recorded step (``label``), from each step's
    observation and the rewards earlier in its episode (the paper's post-hoc annotation)."""
    if not getattr(env, "has_oracle", False):
        raise ConfigError(f"DPT imitates optimal actions: {type(env).__name__} has no oracle "
                          "(declared has_oracle)")
    if tasks is None:
        raise ConfigError("DPT's labels need each history's task (its index in the split)")
    per_stream = jax.vmap(env.recorded_optimal_actions, (0, 0, 0, None))
    labels = jax.jit(jax.vmap(per_stream))(jnp.asarray(data.obs), jnp.asarray(data.reward),
                                           jnp.asarray(data.done, bool), tasks)
    return data._replace(label=np.asarray(labels, np.int8))


def window(data: TrainData, task, stream, offset, n: int) -> tuple[DPTTokens, Targets]:
    """Transitions ``[offset, offset + n)``: the first n-1 are the context, the last one's
    state is the query, its label the imitation target and its (learner's) action, reward
    and next observation the dynamics targets -> DPTTokens [n + 1], Targets (one each)."""
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a[task, stream], offset, n, 0)
    obs, action = token_dtype(sl(data.obs)), token_dtype(sl(data.action))
    reward, next_obs = sl(data.reward).astype(jnp.float32), token_dtype(sl(data.next_obs))
    q = n - 1  # the query transition
    tokens = DPTTokens(
        kind=jnp.concatenate([jnp.array([QUERY]), jnp.full((n - 1,), CONTEXT),
                              jnp.array([QUERY_ACTION])]).astype(jnp.int32),
        obs=jnp.concatenate([obs[q:], obs[:q], obs[q:]]),
        action=jnp.concatenate([action[q:], action[:q], action[q:]]),
        reward=jnp.concatenate([jnp.zeros((1,)), reward[:q], jnp.zeros((1,))]),
        next_obs=jnp.concatenate([next_obs[q:], next_obs[:q], next_obs[q:]]),
        pos=jnp.arange(n + 1, dtype=jnp.int32), valid=jnp.ones((n + 1,), bool))
    targets = Targets(action=sl(data.label)[q].astype(jnp.int32), reward=reward[q],
                      next_obs=next_obs[q], rtg=jnp.float32(0.0),
                      imitate=data.imitate[task].astype(jnp.float32))
    return tokens, targets


def loss(model, params, tokens: DPTTokens, targets: Targets, key, lam: float,
         deterministic: bool = False, weight=None, cf_weight: float = 0.0):
    """Cross-entropy of the label at every prefix position 1..n-1 (the code's mean over
    B x (n-1)), plus ``lam`` x (reward + next-obs loss at the query-action token)."""
    codec = model.codec
    keys = jax.random.split(key, tokens.kind.shape[0])
    heads = jax.vmap(lambda t, k: model.apply({"params": params}, t,
                                              deterministic=deterministic,
                                              rngs={"dropout": k}))(tokens, keys)
    n = tokens.kind.shape[1] - 1
    logits = heads.action_logits[:, 1:n]  # [B, n-1, A]
    label = jnp.broadcast_to(targets.action[:, None], logits.shape[:2])
    per_seq = codec.action.loss(logits, label).mean(-1)  # [B]
    act = (per_seq * targets.imitate).sum() / jnp.maximum(targets.imitate.sum(), 1.0)
    rew = codec.reward.loss(heads.reward_logits[:, n], targets.reward).mean()
    obs = codec.obs.loss(heads.obs_logits[:, n], targets.next_obs).mean()
    total = act + lam * (rew + obs)
    return total, {"loss": total, "action_loss": act, "reward_loss": rew, "obs_loss": obs}


def stats(model, params, tokens: DPTTokens, targets: Targets) -> dict[str, tuple]:
    """Validation hits and counts: label accuracy by prefix length (position 1..n-1), and
    reward / next-obs accuracy of the query action."""
    codec = model.codec
    heads = jax.vmap(lambda t: model.apply({"params": params}, t))(tokens)
    n = tokens.kind.shape[1] - 1
    act_ok = codec.action.correct(heads.action_logits[:, 1:n],
                                  jnp.broadcast_to(targets.action[:, None], (tokens.kind.shape[0],
                                                                             n - 1)))
    rew_ok = codec.reward.correct(heads.reward_logits[:, n], targets.reward)
    obs_ok = codec.obs.correct(heads.obs_logits[:, n], targets.next_obs)
    f = lambda x: x.astype(jnp.float32).sum(0)
    ones = lambda x: jnp.full(x.shape[1:], x.shape[0], jnp.float32)
    return {"action_acc": (f(act_ok), ones(act_ok)),
            "reward_acc": (f(rew_ok[:, None]), ones(rew_ok[:, None])),
            "obs_acc": (f(obs_ok[:, None]), ones(obs_ok[:, None]))}


# -- meta-test ------------------------------------------------------------------------------------
class Context(NamedTuple):
    """The last ``n - 1`` real transitions, oldest first, left-aligned (``count`` valid),
    and the current query: DPT's whole real context, also the planner's root."""

    obs: jax.Array  # [n-1, obs_dim]
    action: jax.Array  # [n-1, ...]
    reward: jax.Array  # float32 [n-1]
    next_obs: jax.Array  # [n-1, obs_dim]
    count: jax.Array  # int32 []
    query: jax.Array  # [obs_dim]
    step: jax.Array  # int32 []: the query's real step


def _blank(codec, length: int) -> DPTTokens:
    return DPTTokens(kind=jnp.zeros((length,), jnp.int32),
                     obs=jnp.zeros((length, codec.obs.dim), codec.obs.dtype),
                     action=jnp.zeros((length, *codec.action.shape), codec.action.dtype),
                     reward=jnp.zeros((length,), jnp.float32),
                     next_obs=jnp.zeros((length, codec.obs.dim), codec.obs.dtype),
                     pos=jnp.arange(length, dtype=jnp.int32), valid=jnp.ones((length,), bool))


def empty_context(codec, n_transit: int) -> Context:
    m = n_transit - 1
    return Context(jnp.zeros((m, codec.obs.dim), codec.obs.dtype),
                   jnp.zeros((m, *codec.action.shape), codec.action.dtype),
                   jnp.zeros((m,), jnp.float32), jnp.zeros((m, codec.obs.dim), codec.obs.dtype),
                   jnp.int32(0), jnp.zeros((codec.obs.dim,), codec.obs.dtype), jnp.int32(0))


def push(ctx: Context, obs, action, reward, next_obs) -> Context:
    """Append one transition, dropping the oldest once the window is full."""
    m = ctx.reward.shape[0]
    full = ctx.count >= m
    slot = jnp.minimum(ctx.count, m - 1)

    def add(buf, x):
        buf = jnp.where(full, jnp.roll(buf, -1, axis=0), buf)
        return buf.at[slot].set(jnp.asarray(x).astype(buf.dtype))

    return ctx._replace(obs=add(ctx.obs, obs), action=add(ctx.action, action),
                        reward=add(ctx.reward, reward), next_obs=add(ctx.next_obs, next_obs),
                        count=jnp.minimum(ctx.count + 1, m))


def sequence(ctx: Context, query, imagined: Context, n_imagined, query_action,
             with_action) -> tuple[DPTTokens, jax.Array]:
    """``[q, window, qa]`` of ``n + 1`` slots: the window is the last n-1 of the real
    transitions followed by ``n_imagined`` imagined ones; ``qa`` is valid iff
    ``with_action``. Returns the tokens and the index whose heads answer the call (the last
    context token, or qa)."""
    m = ctx.reward.shape[0]
    total = ctx.count + n_imagined
    start = jnp.maximum(total - m, 0)
    k = start + jnp.arange(m)  # [m]: index into (real ++ imagined)
    src = jnp.where(k < ctx.count, k, m + k - ctx.count)
    valid = k < total
    both = lambda a, b: jnp.concatenate([a, b])[jnp.clip(src, 0, m + b.shape[0] - 1)]
    used = jnp.minimum(total, m)
    cat = lambda q, c, a: jnp.concatenate([q[None], c, a[None]])
    tokens = DPTTokens(
        kind=jnp.concatenate([jnp.array([QUERY]), jnp.full((m,), CONTEXT),
                              jnp.array([QUERY_ACTION])]).astype(jnp.int32),
        obs=cat(query, both(ctx.obs, imagined.obs), query),
        action=cat(query_action, both(ctx.action, imagined.action), query_action),
        reward=cat(jnp.float32(0), both(ctx.reward, imagined.reward), jnp.float32(0)),
        next_obs=cat(query, both(ctx.next_obs, imagined.next_obs), query),
        pos=jnp.concatenate([jnp.arange(m + 1), used[None] + 1]).astype(jnp.int32),
        valid=jnp.concatenate([jnp.ones((1,), bool), valid, jnp.asarray(with_action)[None]]))
    return tokens, jnp.where(with_action, m + 1, used)


def world_model(model: DPTTransformer, params) -> WorldModel:
    """DPT behind the planners' interface. The real cache is the agent's ``Context``; a
    beam's cache holds its imagined tokens in AD form (``planning.world_model.empty_tokens``:
    the action token of depth d at slot 2d, the state token of depth d at slot 2d-1), which
    ``decode`` lays out as DPT transitions (s, a, r̂, ŝ') after the real ones."""
    codec = model.codec

    def decode(tok: Tokens, caches: tuple) -> tuple[Heads, Tokens]:
        chex.assert_shape(tok.kind, (1,))
        ctx = caches[0]
        beam = caches[1] if len(caches) > 1 else empty_tokens(2, codec)
        depth = tok.step[0] - ctx.step  # imagined depth of the new token
        slot = jnp.clip(2 * depth + tok.kind[0] - 1, 0, beam.step.shape[0] - 1)
        beam = jax.tree.map(lambda b, t: jnp.where(depth * 2 + tok.kind[0] >= 1,
                                                   b.at[slot].set(t[0].astype(b.dtype)), b),
                            beam, tok)
        d_max = beam.step.shape[0] // 2
        j = jnp.arange(d_max)
        s_slot, a_slot, n_slot = 2 * j - 1, 2 * j, 2 * j + 1  # S_j, A_j, S_{j+1}
        at = lambda a, s: a[jnp.clip(s, 0, beam.step.shape[0] - 1)]
        imagined = Context(
            obs=jnp.where((j == 0)[:, None], ctx.query[None], at(beam.obs, s_slot)),
            action=at(beam.action, a_slot), reward=at(beam.prev_reward, n_slot),
            next_obs=at(beam.obs, n_slot), count=depth, query=ctx.query, step=ctx.step)
        query = jnp.where(depth == 0, ctx.query, at(beam.obs, 2 * depth - 1))
        query = jnp.where(tok.kind[0] == 0, tok.obs[0].astype(query.dtype), query)
        seq, read = sequence(ctx, query, imagined, depth, tok.action[0],
                             tok.kind[0] == 1)
        heads = model.apply({"params": params}, seq)
        return jax.tree.map(lambda x: x[read][None], heads), tok

    return WorldModel(lambda length: empty_tokens(length, codec), decode,
                      lambda cache, entries, tokens, slots: write_tokens(cache, entries, slots))


def make_agent(model: DPTTransformer, params, codec, n_transit: int) -> Agent:
    """DPT at meta-test: push the transition that led here, query the current state."""

    def init(task: TaskInfo) -> Context:
        return empty_context(codec, n_transit)

    def query(ctx: Context, now: Step):
        last = now.last
        ctx = jax.tree.map(lambda a, b: jnp.where(now.step > 0, a, b),
                           push(ctx, last.obs, last.action, last.reward, last.next_obs), ctx)
        ctx = ctx._replace(query=jnp.asarray(now.obs).astype(ctx.query.dtype), step=now.step)
        none = ctx._replace(obs=ctx.obs[:0], action=ctx.action[:0], reward=ctx.reward[:0],
                            next_obs=ctx.next_obs[:0])
        seq, read = sequence(ctx, ctx.query, none, jnp.int32(0),
                             jnp.zeros(codec.action.shape, codec.action.dtype), False)
        heads = model.apply({"params": params}, seq)
        return ctx, heads.action_logits[read], ctx

    def commit(ctx: Context, now: Step, action):
        return ctx  # the transition enters with the next step's ``last``

    return Agent(world_model(model, params), init, query, commit)


__all__ = ["DPTTokens", "DPTTransformer", "NAME", "check_config", "init_params", "loss",
           "make_agent", "make_model", "prepare_data", "stats", "window", "world_model"]
