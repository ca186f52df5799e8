"""IDT (In-context Decision Transformer) with DICP's dynamics heads, as the paper's code does it.

Three Transformers on the shared backbone (``backbone.Stack``, each of ``ModelConfig``'s
size; the paper: "all three modules share the same set of hyperparameters") decide at two
time scales, ``C = 10`` low-level steps per high-level decision, through a continuous
decision ``z`` of ``DIM_Z = 8`` dimensions:

- Reviewing-Decisions (RD) encodes one executed segment of C transitions into a 16-vector
  ("zdist"): one token per step, the sum of separate embeddings of s, a, r and s'; the
  output at the segment's last token through a linear map.
- Making-Decisions (MD) is the high-level policy over ``H = n_transit / C`` decisions,
  three tokens each::

      index    3i        3i+1      3i+2
      token    RTG'_i    s_i       zdist_i
      predicts           z_i ~ N(mean, exp(logvar))   (the 16-vector, read at s_i)

  ``s_i`` is segment i's first state, ``RTG'_i`` the relabelled return-to-go there (a
  linear map of the raw float, as the code) and ``zdist_i`` RD's vector of segment i, so
  the prediction for segment i sees zdist of earlier segments only.
- Decisions-to-Go (D2G) decodes one segment on its own (it never sees other segments: all
  in-context information enters through z), four tokens per low step j::

      index    4j       4j+1      4j+2              4j+3
      token    z_j      s_j       a_j               r_j
      predicts          a_j       r_j, s'_j (DICP)

  with ``z_j = mean + exp(logvar / 2) * eps_j``: a fresh reparameterised sample of the
  segment's decision per low step (the code's shape [B, H, C, 8]).

Training (``loss``): a window of ``n_transit`` contiguous steps at any offset (segments
are not aligned with episodes when the offset is not, as in the code), cut into H
segments: RD on every segment, MD on (RTG', s, zdist) at the segment starts, z sampled,
D2G on every segment; loss = action cross-entropy over all B x n_transit positions
(against the source learner's actions, AD-style) + ``lam`` x (reward + next-obs
cross-entropy at every action token); ``lam = 0`` is plain IDT. It is end-to-end through
the reparameterised z: MD learns only through D2G's losses and RD only as MD's input for
later segments, so RD gets no gradient when H = 1.

Data (``prepare_data``, on the host once per split): the episodes of every history are
sorted by return, ascending, and return-to-go is relabelled so that every episode starts
at the history's best return-to-go M and falls by each reward (``RTG' = RTG + M - R_e``).

Meta-test (``make_agent``): the code's evaluation loop in fixed-size buffers. MD runs at
every episode-aligned segment start (``episode_step % C == 0``) on the high-level lists
(RTG', segment-start states, RD vectors; at most H entries, the oldest dropped), the
newest RD slot zero; its prediction at the newest state token gives the C samples of z;
D2G then acts for C real steps from a buffer of 4C tokens (right-padded: causal, so the
padding never changes a valid output), reading the action head at the current state
token; when the segment ends RD encodes it. RTG' starts at ``TaskInfo.target_return``
(the family's oracle optimal return, the code's ``get_max_return``), is reset to it at
every episode start and otherwise falls by the segment's summed reward.

DICP-IDT plans with the shared beam planner through ``world_model``: the search is over
low-level actions inside the current decision (z is not searched); the root is the current
D2G sequence; an action token reads r̂ and ŝ' from the heads at its action token; an
imagined step appends ``[r̂, z_m, ŝ']`` and then the next action, ``m`` being the imagined
depth (the code indexes the segment's z samples from the segment start whatever the
current low step; clamped to C - 1 if the planner's depth exceeds C).

Where the paper and the code disagree, this follows the code:

- rewards and s' enter RD's tokens (paper text: MD's); MD's tokens hold no reward;
- one loss (action + lam x dynamics) through the reparameterised z, no z likelihood, KL
  or prior (paper Eq. 5 has three likelihood terms);
- no return-to-go head: beams are ranked by summed predicted rewards (paper: + R̂);
- planning depth is the code's 10 = C whatever Table 6 says: set ``BeamConfig(depth=10)``
  for DICP-IDT rows.

Where this differs from the code (the shared planner, the shared data):

- the shared beam planner caps the imagined depth at the episode's end (``steps_left``);
  the code's does not;
- at deeper beam levels the shared planner expands every beam's actions in (sampled)
  policy order, the code in index order: with all actions expanded only the tie order
  differs; the root is the same (all actions, sampled order, stable sort);
- the sort is stable (``np.argsort(kind="stable")``): the code's default quicksort leaves
  the order of equal-return episodes unspecified;
- s' at an episode's last step is the terminal observation in our histories and in the
  meta-test's ``Transition`` (the code has the reset observation in both), so training and
  evaluation agree as they do in the code;
- states go through the env codec's observation embedding (the grid's factored cell
  embedding) where the code embeds the cell id; the backbone is the shared ``Stack``;
- z noise at the meta-test: ``fold_in(TaskInfo.key, step)`` at each decision's first step
  (``PRNGKey(0)`` if the rollout gives no key); validation (``stats``) samples z from a
  fixed key, so its numbers are reproducible;
- the rollout is vmapped over tasks, where a conditional runs both branches anyway: RD and
  MD run at every step and their results are kept only where a segment ends / starts;
- tokens carry no kind embedding (none in the code: each kind has its own embedding);
- the code's Meta-World specifics (clipped reward regression, the greedy L = 10 planner
  only in an episode's last 40 steps) are not reproduced: a continuous codec's parts are
  used as they are, and a next observation that is not ``predicted`` gets no loss.

The horizon must be a multiple of C (the code asserts it); ``prepare_data`` refuses
histories whose episodes are not exactly ``env.horizon`` steps of such a horizon, and the
agent, which starts a decision at ``episode_step % C == 0``, assumes it.
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
from dicp_jax.model import EMPTY_STEP, Heads, ModelConfig, Tokens, token_dtype
from dicp_jax.planning.world_model import WorldModel, empty_tokens, write_tokens

NAME = "idt"
LAYOUT = "idt"  # its own: validated through ``stats``
C = 10  # low-level steps per high-level decision (the code's ``low_per_high``)
DIM_Z = 8  # a decision z; MD and RD emit its mean and log-variance (2 * DIM_Z)
Z, S, A, R = 0, 1, 2, 3  # D2G token kinds, in their order within a low step


# -- token layouts ------------------------------------------------------------------------------
class IDTTokens(NamedTuple):  # one training window, leading [..., n]
    obs: jax.Array  # [n, obs_dim]
    action: jax.Array  # [n] or [n, action_dim]
    reward: jax.Array  # float32 [n]
    next_obs: jax.Array  # [n, obs_dim]
    rtg: jax.Array  # float32 [n]: relabelled return-to-go (``prepare_data``)


class Segment(NamedTuple):  # RD's input: one segment, leading [c]
    obs: jax.Array  # [c, obs_dim]
    action: jax.Array  # [c] or [c, action_dim]
    reward: jax.Array  # float32 [c]
    next_obs: jax.Array  # [c, obs_dim]
    valid: jax.Array  # bool [c]: recorded steps (a prefix); RD reads the last valid one


class Decisions(NamedTuple):  # MD's input: the high-level lists, leading [H]
    rtg: jax.Array  # float32 [H]: RTG' at each segment's first step
    obs: jax.Array  # [H, obs_dim]: each segment's first state
    zdist: jax.Array  # float32 [H, 2 * DIM_Z]: RD of each segment (0 where not yet known)
    valid: jax.Array  # bool [H]: held entries (a prefix)


class LowTokens(NamedTuple):  # D2G's input, leading [L]
    kind: jax.Array  # int32 [L]: Z, S, A or R
    z: jax.Array  # float32 [L, DIM_Z] (Z tokens)
    obs: jax.Array  # [L, obs_dim] (S tokens)
    action: jax.Array  # [L] or [L, action_dim] (A tokens)
    reward: jax.Array  # float32 [L] (R tokens)
    pos: jax.Array  # int32 [L]: RoPE position; a token sees valid tokens at positions <= its
    valid: jax.Array  # bool [L]


# -- the three modules --------------------------------------------------------------------------
class Reviewing(nn.Module):
    """RD: one executed segment -> its 16-vector, read at the last valid step."""

    cfg: ModelConfig
    codec: Any

    @nn.compact
    def __call__(self, seg: Segment, deterministic: bool = True) -> jax.Array:
        codec, w, c = self.codec, self.cfg.width, seg.reward.shape[0]
        x = (PartEmbed(codec.obs, w, name="state")(seg.obs)
             + PartEmbed(codec.action, w, name="action")(seg.action)
             + PartEmbed(codec.reward, w, name="reward")(seg.reward)
             + PartEmbed(codec.obs, w, name="next_state")(seg.next_obs))  # [c, W]
        h = Stack(self.cfg, name="backbone")(x.astype(jnp.dtype(self.cfg.dtype)),
                                              jnp.arange(c), seg.valid, deterministic)
        last = jnp.max(jnp.where(seg.valid, jnp.arange(c), 0))
        return nn.Dense(2 * DIM_Z, name="zdist_head")(h[last])  # [2 * DIM_Z]


class Making(nn.Module):
    """MD: ``[RTG'_i, s_i, zdist_i]`` per decision -> z's distribution at every s_i."""

    cfg: ModelConfig
    codec: Any

    @nn.compact
    def __call__(self, dec: Decisions, deterministic: bool = True) -> jax.Array:
        w, n = self.cfg.width, dec.rtg.shape[0]
        e_rtg = nn.Dense(w, name="rtg_embed")(dec.rtg.astype(jnp.float32)[:, None])
        e_s = PartEmbed(self.codec.obs, w, name="state")(dec.obs)
        e_z = nn.Dense(w, name="zdist_embed")(dec.zdist.astype(jnp.float32))
        x = jnp.stack([e_rtg, e_s, e_z], 1).reshape(3 * n, w)  # [3H, W]
        h = Stack(self.cfg, name="backbone")(x.astype(jnp.dtype(self.cfg.dtype)),
                                              jnp.arange(3 * n), jnp.repeat(dec.valid, 3),
                                              deterministic)
        return nn.Dense(2 * DIM_Z, name="z_head")(h[1::3])  # [H, 2 * DIM_Z]


class DecisionsToGo(nn.Module):
    """D2G: one segment's ``[z, s, a, r]`` tokens -> action head (read at S tokens), reward
    and next-obs heads (read at A tokens)."""

    cfg: ModelConfig
    codec: Any

    @nn.compact
    def __call__(self, low: LowTokens, deterministic: bool = True) -> Heads:
        codec, w = self.codec, self.cfg.width
        e_z = nn.Dense(w, name="z_embed")(low.z.astype(jnp.float32))
        e_s = PartEmbed(codec.obs, w, name="state")(low.obs)
        e_a = PartEmbed(codec.action, w, name="action")(low.action)
        e_r = PartEmbed(codec.reward, w, name="reward")(low.reward)
        k = low.kind[:, None]
        x = jnp.where(k == Z, e_z, jnp.where(k == S, e_s, jnp.where(k == A, e_a, e_r)))
        h = Stack(self.cfg, name="backbone")(x.astype(jnp.dtype(self.cfg.dtype)), low.pos,
                                              low.valid, deterministic)
        return Heads(
            action_logits=nn.Dense(codec.action.head_size, name="action_head")(h),
            reward_logits=nn.Dense(codec.reward.head_size, name="reward_head")(h),
            obs_logits=nn.Dense(codec.obs.head_size, name="obs_head")(h),
            rtg=jnp.zeros(h.shape[:-1], jnp.float32),  # the code has no RTG head
        )


class IDT(nn.Module):
    """The three modules under one parameter tree (``rd``, ``md``, ``d2g``). Each method
    runs one sequence; callers batch with ``jax.vmap`` around ``apply`` (``forward``)."""

    cfg: ModelConfig
    codec: Any

    def setup(self):
        self.rd = Reviewing(self.cfg, self.codec)
        self.md = Making(self.cfg, self.codec)
        self.d2g = DecisionsToGo(self.cfg, self.codec)

    def review(self, seg: Segment, deterministic: bool = True) -> jax.Array:
        return self.rd(seg, deterministic)

    def decide(self, dec: Decisions, deterministic: bool = True) -> jax.Array:
        return self.md(dec, deterministic)

    def decode(self, low: LowTokens, deterministic: bool = True) -> Heads:
        return self.d2g(low, deterministic)

    def __call__(self, seg: Segment, dec: Decisions, low: LowTokens,
                 deterministic: bool = True):
        """All three (parameter initialisation)."""
        return self.review(seg, deterministic), self.decide(dec, deterministic), \
            self.decode(low, deterministic)


def make_model(model_cfg: ModelConfig, codec) -> IDT:
    return IDT(model_cfg, codec)


def init_params(model: IDT, key: jax.Array):
    codec = model.codec
    seg = blank_segment(codec, C)
    dec = Decisions(jnp.zeros((2,), jnp.float32), jnp.zeros((2, codec.obs.dim), codec.obs.dtype),
                    jnp.zeros((2, 2 * DIM_Z), jnp.float32), jnp.ones((2,), bool))
    low = segment_tokens(jnp.zeros((C, DIM_Z)), seg, 4 * C)
    init = lambda k: model.init({"params": k}, seg, dec, low)["params"]
    return jax.jit(init)(key)


def check_config(train_cfg, model_cfg: ModelConfig) -> None:
    """One window of whole segments per sequence: AD's multi-window options do not apply."""
    require_one_window(NAME, train_cfg)
    if model_cfg.n_transit < C or model_cfg.n_transit % C:
        raise ConfigError(f"IDT cuts its window into decisions of {C} steps: n_transit must "
                          f"be a positive multiple of {C}, got {model_cfg.n_transit}")


# -- data -----------------------------------------------------------------------------------------
def prepare_data(data: TrainData, env, tasks) -> TrainData:
    """Sort each history's episodes by return, ascending (stable), and relabel return-to-go:
    ``RTG' = RTG + M - R_e`` with M the history's largest RTG and R_e the episode's return,
    so every episode starts at M (the code's dataset). Every per-transition array moves with
    its episode (counterfactuals and labels too); ``imitate`` is per task and stays."""
    horizon = int(env.horizon)
    if horizon % C:
        raise ConfigError(f"IDT decides every {C} steps: the horizon ({horizon}) must be a "
                          f"multiple of {C}")
    n_tasks, n_streams, n_steps = np.shape(data.reward)[:3]
    if n_steps % horizon:
        raise ConfigError(f"IDT sorts whole episodes: streams of {n_steps} steps are not "
                          f"whole episodes of {horizon}")
    ends = (np.arange(n_steps) % horizon) == horizon - 1
    if not np.array_equal(np.asarray(data.done, bool), np.broadcast_to(ends, data.done.shape)):
        raise ConfigError(f"IDT sorts whole episodes: every episode must last exactly the "
                          f"horizon ({horizon} steps)")
    n_ep = n_steps // horizon
    episodes = lambda a: np.asarray(a).reshape(n_tasks, n_streams, n_ep, horizon,
                                               *np.shape(a)[3:])
    rtg = episodes(data.rtg).astype(np.float32)  # [N, S, E, h]
    ret = rtg[..., 0]  # [N, S, E]: each episode's return
    order = np.argsort(ret, axis=-1, kind="stable")  # [N, S, E]

    def permute(a):
        if a is None:
            return None
        e = episodes(a)
        idx = order.reshape(order.shape + (1,) * (e.ndim - 3))
        return np.take_along_axis(e, idx, axis=2).reshape(np.shape(a))

    best = rtg.max(axis=(2, 3))  # [N, S]: M
    offset = best[..., None] - np.take_along_axis(ret, order, -1)  # [N, S, E]
    relabelled = (episodes(permute(data.rtg)) + offset[..., None]).reshape(np.shape(data.rtg))
    moved = {k: permute(getattr(data, k)) for k in ("obs", "action", "reward", "next_obs",
                                                    "done", "cf_action", "cf_reward",
                                                    "cf_next_obs", "label")}
    return data._replace(rtg=relabelled.astype(np.float32), **moved)


def window(data: TrainData, task, stream, offset, n: int) -> tuple[IDTTokens, Targets]:
    """Steps ``[offset, offset + n)`` (any offset): IDTTokens [n], Targets [n] (every
    position is an action target, every action token a dynamics target)."""
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a[task, stream], offset, n, 0)
    obs, action = token_dtype(sl(data.obs)), token_dtype(sl(data.action))
    reward, next_obs = sl(data.reward).astype(jnp.float32), token_dtype(sl(data.next_obs))
    rtg = sl(data.rtg).astype(jnp.float32)
    tokens = IDTTokens(obs, action, reward, next_obs, rtg)
    targets = Targets(action=action, reward=reward, next_obs=next_obs, rtg=rtg,
                      imitate=jnp.full((n,), data.imitate[task], jnp.float32))
    return tokens, targets


# -- one forward pass over a batch of windows -----------------------------------------------------
def segment_tokens(z: jax.Array, seg: Segment, n_valid: jax.Array) -> LowTokens:
    """D2G's tokens of one segment, ``[z_t, s_t, a_t, r_t]`` for t < c: 4c tokens, the
    first ``n_valid`` of them valid (training: all 4c; acting at low step j: 4j + 2, up to
    the state token s_j). An invalid token does not see itself, so a read position must be
    valid."""
    c = seg.reward.shape[0]
    chex.assert_shape(z, (c, DIM_Z))
    i = jnp.arange(4 * c)
    t = i // 4
    return LowTokens(kind=jnp.tile(jnp.array([Z, S, A, R], jnp.int32), c),
                     z=z[t].astype(jnp.float32), obs=seg.obs[t], action=seg.action[t],
                     reward=seg.reward[t].astype(jnp.float32), pos=i.astype(jnp.int32),
                     valid=i < n_valid)


def sample_z(pred: jax.Array, eps: jax.Array) -> jax.Array:
    """Reparameterised z = mean + exp(logvar / 2) * eps; ``pred [..., 2 * DIM_Z]``, ``eps
    [..., c, DIM_Z]`` (one draw per low step) -> [..., c, DIM_Z]."""
    mean, logvar = pred[..., None, :DIM_Z], pred[..., None, DIM_Z:]
    return mean + jnp.exp(0.5 * logvar) * eps


class Forward(NamedTuple):
    heads: Heads  # leading [B, n]: action head at S tokens, reward / obs heads at A tokens
    zdist: jax.Array  # [B, H, 2 * DIM_Z]: RD of each segment
    z_pred: jax.Array  # [B, H, 2 * DIM_Z]: MD's prediction for each segment
    z: jax.Array  # [B, H, c, DIM_Z]


def forward(model: IDT, params, tokens: IDTTokens, key: jax.Array,
            deterministic: bool = True) -> Forward:
    """RD -> MD -> z -> D2G over windows ``tokens [B, n]`` (n a multiple of C)."""
    b, n = tokens.reward.shape
    h = n // C
    chex.assert_equal(h * C, n)
    seg = lambda x: x.reshape(b, h, C, *x.shape[2:])  # [B, n, ...] -> [B, H, C, ...]
    k_rd, k_md, k_d2g, k_z = jax.random.split(key, 4)
    apply = lambda method: (lambda x, k: model.apply({"params": params}, x, deterministic,
                                                     rngs={"dropout": k}, method=method))
    per_seg = lambda f: jax.vmap(jax.vmap(f))  # over [B, H]
    seg_keys = lambda k: jax.random.split(k, b * h).reshape(b, h, -1)  # dropout, per run
    segs = Segment(seg(tokens.obs), seg(tokens.action), seg(tokens.reward),
                   seg(tokens.next_obs), jnp.ones((b, h, C), bool))
    zdist = per_seg(apply("review"))(segs, seg_keys(k_rd))  # [B, H, 2 * DIM_Z]
    dec = Decisions(tokens.rtg[:, ::C], tokens.obs[:, ::C], zdist, jnp.ones((b, h), bool))
    pred = jax.vmap(apply("decide"))(dec, jax.random.split(k_md, b))  # [B, H, 2 * DIM_Z]
    z = sample_z(pred, jax.random.normal(k_z, (b, h, C, DIM_Z)))  # [B, H, C, DIM_Z]
    low = jax.vmap(jax.vmap(segment_tokens, (0, 0, None)), (0, 0, None))(z, segs, 4 * C)
    heads = per_seg(apply("decode"))(low, seg_keys(k_d2g))  # [B, H, 4C, ...]
    pick = lambda x, kind: x[:, :, kind::4].reshape(b, n, *x.shape[3:])  # [B, n, ...]
    chex.assert_shape(heads.action_logits, (b, h, 4 * C, model.codec.action.head_size))
    return Forward(Heads(pick(heads.action_logits, S), pick(heads.reward_logits, A),
                         pick(heads.obs_logits, A), jnp.zeros((b, n), jnp.float32)),
                   zdist, pred, z)


def loss(model: IDT, params, tokens: IDTTokens, targets: Targets, key, lam: float,
         deterministic: bool = False, weight=None, cf_weight: float = 0.0):
    """Action cross-entropy at every position (mean over B x n, weighted by ``imitate``)
    + ``lam`` x (reward + next-obs loss at every action token). ``weight`` [B, n] (never
    set: ``check_config`` refuses true_context) and ``cf_weight`` (refused) are accepted
    for the method protocol."""
    codec = model.codec
    predicts_obs = getattr(codec.obs, "predicted", True)
    heads = forward(model, params, tokens, key, deterministic).heads
    w = jnp.ones(targets.reward.shape, jnp.float32) if weight is None else weight  # [B, n]
    mean = lambda x, v=w: (x * v).sum() / jnp.maximum(v.sum(), 1.0)
    act = mean(codec.action.loss(heads.action_logits, targets.action), w * targets.imitate)
    rew = mean(codec.reward.loss(heads.reward_logits, targets.reward))
    obs = (mean(codec.obs.loss(heads.obs_logits, targets.next_obs)) if predicts_obs
           else jnp.zeros((), jnp.float32))
    total = act + lam * (rew + obs)
    return total, {"loss": total, "action_loss": act, "reward_loss": rew,
                   **({"obs_loss": obs} if predicts_obs else {})}


STATS_KEY = 0  # z is sampled from this fixed key in validation (reproducible numbers)


def stats(model: IDT, params, tokens: IDTTokens, targets: Targets) -> dict[str, tuple]:
    """Validation hits and counts by window position [n]: action accuracy at S tokens,
    reward / next-obs accuracy at A tokens (z sampled as at the meta-test)."""
    codec = model.codec
    heads = forward(model, params, tokens, jax.random.PRNGKey(STATS_KEY)).heads
    f = lambda x: x.astype(jnp.float32).sum(0)
    ones = lambda x: jnp.full(x.shape[1:], x.shape[0], jnp.float32)
    act_ok = codec.action.correct(heads.action_logits, targets.action)
    rew_ok = codec.reward.correct(heads.reward_logits, targets.reward)
    out = {"action_acc": (f(act_ok), ones(act_ok)), "reward_acc": (f(rew_ok), ones(rew_ok))}
    if getattr(codec.obs, "predicted", True):
        obs_ok = codec.obs.correct(heads.obs_logits, targets.next_obs)
        out["obs_acc"] = (f(obs_ok), ones(obs_ok))
    return out


# -- meta-test ------------------------------------------------------------------------------------
def blank_segment(codec, c: int) -> Segment:
    return Segment(jnp.zeros((c, codec.obs.dim), codec.obs.dtype),
                   jnp.zeros((c, *codec.action.shape), codec.action.dtype),
                   jnp.zeros((c,), jnp.float32), jnp.zeros((c, codec.obs.dim), codec.obs.dtype),
                   jnp.zeros((c,), bool))


def blank_decisions(codec, n_high: int) -> Decisions:
    return Decisions(jnp.zeros((n_high,), jnp.float32),
                     jnp.zeros((n_high, codec.obs.dim), codec.obs.dtype),
                     jnp.zeros((n_high, 2 * DIM_Z), jnp.float32), jnp.zeros((n_high,), bool))


def push_decision(dec: Decisions, rtg: jax.Array, obs: jax.Array) -> Decisions:
    """Append a decision (its RD slot zero until its segment ends), dropping the oldest once
    the lists hold ``H``."""
    n_high = dec.rtg.shape[0]
    count = dec.valid.sum()
    full, slot = count >= n_high, jnp.minimum(count, n_high - 1)
    add = lambda buf, x: jnp.where(full, jnp.roll(buf, -1, 0), buf).at[slot].set(
        jnp.asarray(x).astype(buf.dtype))
    return Decisions(add(dec.rtg, rtg), add(dec.obs, obs),
                     add(dec.zdist, jnp.zeros((2 * DIM_Z,))),
                     jnp.arange(n_high) < jnp.minimum(count + 1, n_high))


class RealCache(NamedTuple):
    """The current segment as D2G sees it: the planner's root."""

    z: jax.Array  # float32 [c, DIM_Z]: the current decision's samples
    seg: Segment  # its transitions so far (obs also holds the current state at ``j``)
    j: jax.Array  # int32 []: the current low step
    step: jax.Array  # int32 []: the current real step


class AgentState(NamedTuple):
    high: Decisions  # MD's lists [H], oldest first; the last valid one is the current decision
    cache: RealCache
    target: jax.Array  # float32 []: RTG' asked for at every episode start
    key: jax.Array  # the task's key; a decision's noise is fold_in(key, its first step)


def imagined_tokens(real: RealCache, beam: Tokens) -> LowTokens:
    """A beam's imagined steps in D2G form, placed after the real prefix (which ends with
    the state token of low step ``j`` at position 4j + 1)::

        depth 0: A(a_0)
        depth d: R(r̂_{d-1}) Z(z_min(d, c-1)) S(ŝ_d) A(a_d)

    ``beam`` is the planner's per-beam buffer in AD form (``empty_tokens``): depth d's
    action token at slot 2d, its state token (ŝ_d, r̂_{d-1}) at slot 2d - 1. -> [4D]"""
    n_slots, c = beam.step.shape[0], real.z.shape[0]
    depth = jnp.arange(n_slots // 2)  # [D]
    filled = beam.step != EMPTY_STEP
    s_slot = jnp.clip(2 * depth - 1, 0, n_slots - 1)
    a_slot = 2 * depth
    has_s, has_a = (depth >= 1) & filled[s_slot], filled[a_slot]
    four = lambda x: jnp.repeat(x[:, None], 4, 1)  # [D, ...] -> [D, 4, ...]
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    tokens = LowTokens(
        kind=jnp.broadcast_to(jnp.array([R, Z, S, A], jnp.int32), (depth.shape[0], 4)),
        z=four(real.z[jnp.minimum(depth, c - 1)]), obs=four(beam.obs[s_slot]),
        action=four(beam.action[a_slot]), reward=four(beam.prev_reward[s_slot]),
        pos=(4 * real.j + 2 + 4 * depth[:, None] - 3 + jnp.arange(4)).astype(jnp.int32),
        valid=jnp.stack([has_s, has_s, has_s, has_a], -1))
    return jax.tree.map(flat, tokens)


def plan_sequence(real: RealCache, beam: Tokens) -> LowTokens:
    """The real prefix (4c slots, valid up to 4j + 1) followed by the imagined steps."""
    seq = segment_tokens(real.z, real.seg, 4 * real.j + 2)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), seq,
                        imagined_tokens(real, beam))


def world_model(model: IDT, params) -> WorldModel:
    """D2G behind the planners' interface. The real cache is the agent's ``RealCache``; a
    beam's cache holds its imagined tokens in AD form, which ``decode`` lays out as D2G
    steps after the real prefix (``imagined_tokens``) and re-runs the whole short
    sequence per candidate, as the code does."""
    codec = model.codec

    def decode(tok: Tokens, caches: tuple) -> tuple[Heads, Tokens]:
        chex.assert_shape(tok.kind, (1,))
        real = caches[0]
        beam = caches[1] if len(caches) > 1 else empty_tokens(2, codec)
        n_slots, c = beam.step.shape[0], real.z.shape[0]
        depth = tok.step[0] - real.step  # imagined depth of the new token
        kind = tok.kind[0]  # 0 state, 1 action
        slot = jnp.clip(2 * depth + kind - 1, 0, n_slots - 1)
        beam = jax.tree.map(lambda b, t: jnp.where(2 * depth + kind >= 1,
                                                   b.at[slot].set(t[0].astype(b.dtype)), b),
                            beam, tok)
        seq = plan_sequence(real, beam)
        read = jnp.where(2 * depth + kind >= 1, 4 * c + 4 * depth + 2 + kind, 4 * real.j + 1)
        heads = model.apply({"params": params}, seq, method="decode")
        return jax.tree.map(lambda x: x[read][None], heads), tok

    return WorldModel(lambda length: empty_tokens(length, codec), decode,
                      lambda cache, entries, tokens, slots: write_tokens(cache, entries, slots))


def make_agent(model: IDT, params, codec, n_transit: int) -> Agent:
    """IDT at meta-test (module docstring): per real step, record the transition that led
    here in the segment; at a segment start (``episode_step % C == 0``) close the previous
    segment (RD, RTG') and let MD decide (C samples of z); then D2G's action head at the
    current state token."""
    if n_transit < C or n_transit % C:
        raise ConfigError(f"IDT needs n_transit a positive multiple of {C}, got {n_transit}")
    n_high = n_transit // C
    run = lambda method, x: model.apply({"params": params}, x, method=method)

    def init(task: TaskInfo) -> AgentState:
        key = getattr(task, "key", None)
        key = jax.random.PRNGKey(0) if key is None else key
        cache = RealCache(jnp.zeros((C, DIM_Z), jnp.float32), blank_segment(codec, C),
                          jnp.int32(0), jnp.int32(0))
        return AgentState(blank_decisions(codec, n_high), cache,
                          jnp.asarray(task.target_return, jnp.float32), key)

    def query(st: AgentState, now: Step):
        last, seg, j0 = now.last, st.cache.seg, st.cache.j
        put = lambda buf, x: buf.at[j0].set(jnp.asarray(x).astype(buf.dtype))
        recorded = Segment(put(seg.obs, last.obs), put(seg.action, last.action),
                           put(seg.reward, last.reward), put(seg.next_obs, last.next_obs),
                           seg.valid.at[j0].set(True))
        has_last = now.step > 0
        seg = jax.tree.map(lambda a, b: jnp.where(has_last, a, b), recorded, seg)
        new = now.episode_step % C == 0  # a segment starts (the previous one, if any, ended)
        high, count = st.high, st.high.valid.sum()
        ended = new & has_last
        newest = jnp.maximum(count - 1, 0)
        reviewed = high._replace(zdist=high.zdist.at[newest].set(run("review", seg)))
        high = jax.tree.map(lambda a, b: jnp.where(ended, a, b), reviewed, high)
        spent = jnp.where(seg.valid, seg.reward, 0.0).sum()
        rtg = jnp.where(now.first, st.target, high.rtg[newest] - spent)
        high = jax.tree.map(lambda a, b: jnp.where(new, a, b),
                            push_decision(high, rtg, now.obs), high)
        pred = run("decide", high)[high.valid.sum() - 1]  # at the newest state token
        eps = jax.random.normal(jax.random.fold_in(st.key, now.step), (C, DIM_Z))
        z = jnp.where(new, sample_z(pred, eps), st.cache.z)
        seg = jax.tree.map(lambda a, b: jnp.where(new, a, b), blank_segment(codec, C), seg)
        j = (now.episode_step % C).astype(jnp.int32)
        seg = seg._replace(obs=seg.obs.at[j].set(jnp.asarray(now.obs).astype(seg.obs.dtype)))
        cache = RealCache(z, seg, j, jnp.asarray(now.step, jnp.int32))
        heads = run("decode", segment_tokens(z, seg, 4 * j + 2))
        return st._replace(high=high, cache=cache), heads.action_logits[4 * j + 1], cache

    def commit(st: AgentState, now: Step, action) -> AgentState:
        return st  # the transition enters with the next step's ``last``

    return Agent(world_model(model, params), init, query, commit)


__all__ = ["C", "DIM_Z", "NAME", "AgentState", "Decisions", "Forward", "IDT", "IDTTokens",
           "LowTokens", "RealCache", "Segment", "check_config", "forward", "imagined_tokens",
           "init_params", "loss", "make_agent", "make_model", "plan_sequence", "prepare_data",
           "push_decision", "sample_z", "segment_tokens", "stats", "window", "world_model"]
