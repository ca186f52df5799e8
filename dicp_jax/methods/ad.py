"""AD (Algorithm Distillation) with DICP's dynamics heads on the same backbone.

Imitate the source learner's next action and, from the same backbone, predict reward, next
observation and return-to-go.

Batch layout: a plain causal window of ``n`` consecutive transitions of one learning
history (two tokens per transition, see ``dicp_jax.model``), every state token an
imitation target and every action token a dynamics target (dense targets). With
``lam = 0`` (``TrainConfig.dynamics_strength``) this is plain AD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dicp_jax import model as backbone
from dicp_jax.data import Targets, TrainData
from dicp_jax.methods.base import Agent, Step, TaskInfo
from dicp_jax.model import (
    DICPTransformer,
    Tokens,
    action_token,
    branch_heads,
    interleave,
    state_token,
    token_dtype,
    token_pos,
)
from dicp_jax.planning import world_model
from dicp_jax.planning.world_model import WorldModel

NAME = "ad"
LAYOUT = "ad"  # the interleaved state/action tokens of ``dicp_jax.model``


def make_model(model_cfg, codec) -> DICPTransformer:
    return DICPTransformer(model_cfg, codec)


def init_params(model: DICPTransformer, key: jax.Array):
    return backbone.init_params(model, key)


def window(data: TrainData, task, stream, offset, n: int) -> tuple[Tokens, Targets]:
    """One window of n transitions starting at ``offset`` -> Tokens [2n], Targets [n].

    The state token of transition t carries r_{t-1} and first_t = done_{t-1} from the data
    (r = 0, first = True only at the very start of a stream), exactly as a cache filled while
    acting would; its step index is window-relative (RoPE is relative)."""
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a[task, stream], offset, n, 0)
    prev = lambda a, fill: jnp.where(offset > 0,
                                     a[task, stream][jnp.maximum(offset - 1, 0)], fill)
    reward = sl(data.reward).astype(jnp.float32)
    done = sl(data.done).astype(bool)
    prev_reward = jnp.concatenate([prev(data.reward, 0).astype(jnp.float32)[None], reward[:-1]])
    first = jnp.concatenate([prev(data.done, 1).astype(bool)[None], done[:-1]])
    obs, action = sl(data.obs), sl(data.action)
    tokens = interleave(token_dtype(obs), prev_reward, first, action,
                        jnp.arange(n, dtype=jnp.int32))
    targets = Targets(token_dtype(action), reward, token_dtype(sl(data.next_obs)),
                      sl(data.rtg), jnp.full((n,), data.imitate[task], jnp.float32))
    if data.cf_action is not None:
        targets = targets._replace(cf_action=token_dtype(sl(data.cf_action)),
                                   cf_reward=sl(data.cf_reward).astype(jnp.float32),
                                   cf_next_obs=token_dtype(sl(data.cf_next_obs)))
    return tokens, targets


def check_config(train_cfg, model_cfg) -> None:
    """Every training option applies to AD's layout."""


def prepare_data(data: TrainData, env, tasks) -> TrainData:
    """AD imitates the recorded actions as they are: nothing to add."""
    return data


def loss(model, params, tokens, targets, key, lam: float, deterministic: bool = False,
           weight: jax.Array | None = None, cf_weight: float = 0.0):
    """Per-batch loss = imitation + lam * (reward + next obs + return-to-go
    + cf_weight * (reward + next obs of the counterfactual branch tokens)), averaged over
    the positions with ``weight`` [B, n] (default: all); imitation also by
    ``targets.imitate``. A codec whose observation part is not ``predicted`` (the paper's
    Meta-World config) has no next-observation loss: the terms are left out, not zeroed
    by weight, so its untrained head gets no gradient and no metric."""
    codec = model.codec
    predicts_obs = getattr(codec.obs, "predicted", True)  # grid parts: always predicted
    w = jnp.ones(targets.reward.shape, jnp.float32) if weight is None else weight  # [B, n]
    mean = lambda x, v=w: (x * v).sum() / jnp.maximum(v.sum(), 1.0)
    keys = jax.random.split(key, targets.reward.shape[0])
    band = backbone.attention_block(tokens.kind.shape[1], model.cfg.n_transit)
    apply = lambda t, k: model.apply({"params": params}, t, deterministic=deterministic,
                                     rngs={"dropout": k}, band=band)
    heads, kv = jax.vmap(apply)(tokens, keys)
    s, a = slice(0, None, 2), slice(1, None, 2)  # state tokens, action tokens
    act = mean(codec.action.loss(heads.action_logits[:, s], targets.action), w * targets.imitate)
    rew = mean(codec.reward.loss(heads.reward_logits[:, a], targets.reward))
    no_obs = jnp.zeros((), jnp.float32)
    obs = (mean(codec.obs.loss(heads.obs_logits[:, a], targets.next_obs)) if predicts_obs
           else no_obs)
    rtg = mean(jnp.square((heads.rtg[:, a] - targets.rtg) / codec.rtg_scale))
    total = act + lam * (rew + obs + rtg)
    metrics = {"action_loss": act, "reward_loss": rew,
               **({"obs_loss": obs} if predicts_obs else {}), "rtg_loss": rtg}
    if cf_weight > 0:
        branch = jax.vmap(lambda t, v, c, k: branch_heads(model, params, t, v, c, k,
                                                          deterministic))
        bh = branch(tokens, kv, targets.cf_action, keys)  # heads [B, n, ...]
        cf_rew = mean(codec.reward.loss(bh.reward_logits, targets.cf_reward))
        cf_obs = (mean(codec.obs.loss(bh.obs_logits, targets.cf_next_obs)) if predicts_obs
                  else no_obs)
        total = total + lam * cf_weight * (cf_rew + cf_obs)
        metrics.update(cf_reward_loss=cf_rew, **({"cf_obs_loss": cf_obs} if predicts_obs
                                                 else {}))
    return total, {"loss": total, **metrics}


# -- meta-test agent ----------------------------------------------------------------------------
def agent_from(wm: WorldModel, codec, n_transit: int) -> Agent:
    """AD's agent over any world model with AD's token layout (the trained Transformer, its
    uncached adapter, or ``dicp_jax.testing.oracle``): a ring-buffer cache of ``2 *
    n_transit`` token slots; a step appends its state token (which carries the previous
    reward and the episode-start flag, so ``Step.last`` is not needed), then its action
    token. The cache is also the planner's real context."""
    length = 2 * n_transit

    def init(task: TaskInfo):
        return wm.init_cache(length)

    def query(cache, now: Step):
        tok = state_token(codec, now.obs, now.prev_reward, now.first, now.step)
        heads, entries = wm.decode(tok, (cache,))
        cache = wm.write(cache, entries, tok, token_pos(tok) % length)
        return cache, heads.action_logits[0], cache

    def commit(cache, now: Step, action: jax.Array):
        tok = action_token(codec, action, now.step)
        _, entries = wm.decode(tok, (cache,))
        return wm.write(cache, entries, tok, token_pos(tok) % length)

    return Agent(wm, init, query, commit)


def make_agent(model, params, codec, n_transit: int, cached: bool = True) -> Agent:
    """The trained model as an agent: incremental decoding with its key/value cache, or
    (``cached=False``) re-running the whole context per call (the paper code's cost model)."""
    wm = world_model.cached(model, params) if cached else world_model.uncached(model, params)
    return agent_from(wm, codec, n_transit)
