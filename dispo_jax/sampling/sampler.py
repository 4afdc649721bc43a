"""LLaDA's denoising sampler as one jitted ``lax`` loop, with a branch-state logit cache.

Semantics and the deliberate differences from LLaDA's ``generate``: ``docs/METHOD.md`` §4–5.

The canvas is ``prompt ‖ gen_length × MASK``. The completion is split into ``num_blocks`` blocks of
``block_length`` decoded left to right (semi-autoregressive); each block gets
``timesteps_per_block = num_timesteps / num_blocks`` timesteps. At timestep ``j`` of a block,
``block_length // timesteps_per_block`` tokens are committed, plus one for the first
``block_length % timesteps_per_block`` timesteps (LLaDA's ``get_num_transfer_tokens``). Each timestep:

1. one forward pass over the whole canvas (two with unsupervised CFG:
   ``logits = u + (s + 1)(c − u)``, ``u`` from the canvas with the prompt masked);
2. a candidate for every masked position of the current block, ``x0 = argmax(logits/τ + Gumbel)``
   in fp32 (``τ = 0``: plain argmax);
3. a confidence: ``softmax(logits)[x0]`` (untempered) for ``low_confidence``, uniform noise for
   ``random``; committed positions and positions right of the current block get ``−∞``;
4. the top-k masked positions by confidence are committed; committed tokens are never remasked.

Decisions that differ from the PyTorch reference (documented, deliberate):
  * The mask token itself is excluded from the action space (its logit is ``−∞`` in sampling,
    branching and every log-prob; see :func:`action_logits`), so a committed token is never MASK.
    ``allow_mask_action=True`` keeps LLaDA's own semantics instead: MASK is a candidate like any
    token, a position that "commits" MASK stays masked and stays eligible in later timesteps and blocks
    (so candidates are drawn over the whole completion, right of the current block excluded).
  * Left padding is masked out of attention by default (``mask_padding=True``), so a row's output
    does not depend on its batch-mates' lengths; ``mask_padding=False`` attends to pads like d1.
  * Only the current block's logits are computed at ordinary timesteps (positions outside it can never
    be committed); the full completion's logits are computed only at timesteps that a row caches.

Branch states for DiSPO: ``branch_timesteps [B, S]`` (``-1`` = unused slot) names, per row, the timesteps
``t`` (0-based) whose input canvas ``x_t`` and completion logits are cached in the returned
:class:`Rollout`. Memory is ``O(S)``, not ``O(T)``: per state ``G × V`` logits, i.e. for LLaDA-8B
``256 × 126464 × 2 B ≈ 65 MB`` in bf16 (``cache_top_k=k`` stores ``G × k`` values and int32 ids
instead, e.g. ``k = 64``: 256 × 64 × 6 B ≈ 98 KB).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dispo_jax.model import llada

Array = jax.Array
REMASKING = ("low_confidence", "random")
KV_CACHES = ("none", "dual")
THRESHOLD_RULES = ("fast_dllm", "schedule_plus")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Static sampler settings (hashable: pass as a static argument).

  Attributes:
    gen_length: completion length G (multiple of ``block_length``).
    block_length: semi-autoregressive block size.
    num_timesteps: total timesteps T (multiple of the number of blocks).
    temperature: Gumbel-max temperature τ; 0 is greedy.
    remasking: "low_confidence" or "random".
    cfg_scale: unsupervised classifier-free guidance scale s (0 disables it).
    mask_id: the MASK token id.
    mask_padding: exclude left padding from attention (``False`` attends to pads, as d1).
    cache_top_k: cache only the top-k logits (and their ids) per position; None caches all V.
    allow_mask_action: LLaDA's published ``generate`` exactly (MASK stays a candidate; see the
      module docstring); the RL pipeline keeps the default ``False`` (one action space without MASK).
    kv_cache: ``"none"`` (a full forward every timestep) or ``"dual"`` (Fast-dLLM's approximate dual
      cache, see :func:`_cached_hidden`).
    threshold: confidence-threshold parallel decoding; None: off. A block can finish early and
      the next one starts at the next timestep; the loop ends when the completion is full, after at
      most :attr:`max_timesteps` timesteps. Branch states are matched by progress (see
      :func:`_branch_hits`).
    threshold_rule: what a threshold timestep commits (:data:`THRESHOLD_RULES`): ``fast_dllm``
      (Fast-dLLM's rule): the most confident masked position of the block and every other one
      whose confidence is at least ``threshold``; the schedule is unused, so a completion takes
      at most ``gen_length`` timesteps. ``schedule_plus``: the schedule's k_t plus every position
      above ``threshold`` (at most ``num_timesteps``).
  """

  gen_length: int = 256
  block_length: int = 32
  num_timesteps: int = 128
  temperature: float = 0.0
  remasking: str = "low_confidence"
  cfg_scale: float = 0.0
  mask_id: int = 126336
  mask_padding: bool = True
  cache_top_k: Optional[int] = None
  allow_mask_action: bool = False
  kv_cache: str = "none"
  threshold: Optional[float] = None
  threshold_rule: str = "fast_dllm"

  def __post_init__(self):
    problems = []
    if self.threshold_rule not in THRESHOLD_RULES:
      problems.append(f"threshold_rule={self.threshold_rule!r} is not one of {THRESHOLD_RULES}")
    if self.threshold is not None and (not self.threshold > 0 or self.allow_mask_action
                                       or self.remasking != "low_confidence"):
      problems.append("threshold must be > 0, with remasking='low_confidence' and "
                      "allow_mask_action=False")
    if self.kv_cache not in KV_CACHES:
      problems.append(f"kv_cache={self.kv_cache!r} is not one of {KV_CACHES}")
    elif self.kv_cache != "none" and (self.cfg_scale > 0 or self.allow_mask_action):
      problems.append("kv_cache='dual' needs cfg_scale=0 and allow_mask_action=False")
    if self.gen_length <= 0 or self.block_length <= 0 or self.num_timesteps <= 0:
      problems.append("gen_length, block_length and num_timesteps must be positive")
    elif self.gen_length % self.block_length:
      problems.append(f"gen_length={self.gen_length} is not a multiple of "
                      f"block_length={self.block_length}")
    elif self.num_timesteps % (self.gen_length // self.block_length):
      problems.append(f"num_timesteps={self.num_timesteps} is not a multiple of the number of blocks "
                      f"{self.gen_length // self.block_length}")
    if self.remasking not in REMASKING:
      problems.append(f"remasking={self.remasking!r} is not one of {REMASKING}")
    if self.temperature < 0 or self.cfg_scale < 0:
      problems.append("temperature and cfg_scale must be >= 0")
    if self.cache_top_k is not None and self.cache_top_k <= 0:
      problems.append(f"cache_top_k={self.cache_top_k} must be positive or None")
    if problems:
      raise ValueError("Invalid SamplerSettings: " + "; ".join(problems))

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def timesteps_per_block(self) -> int:
    return self.num_timesteps // self.num_blocks

  @property
  def approximate(self) -> bool:
    """Whether the rollouts come from an approximation of the plain sampler's distribution (the
    dual cache, or threshold decoding)."""
    return self.kv_cache != "none" or self.threshold is not None

  @property
  def fast_dllm_threshold(self) -> bool:
    """Whether timesteps commit by Fast-dLLM's threshold rule (top-1 plus all at or above it)."""
    return self.threshold is not None and self.threshold_rule == "fast_dllm"

  @property
  def max_timesteps(self) -> int:
    """The most timesteps a rollout can take: ``num_timesteps``, or ``gen_length`` under Fast-dLLM's
    threshold rule (one commit per timestep at the least). Commit timesteps lie in ``[0, max_timesteps)``."""
    return self.gen_length if self.fast_dllm_threshold else self.num_timesteps

  def transfer_schedule(self) -> np.ndarray:
    """Tokens committed at each timestep of a block: ``[timesteps_per_block]`` int32, sums to block_length."""
    base, rem = divmod(self.block_length, self.timesteps_per_block)
    return (base + (np.arange(self.timesteps_per_block) < rem)).astype(np.int32)

  def commits_per_timestep(self) -> np.ndarray:
    """Tokens committed at every global timestep: ``[num_timesteps]`` int32."""
    return np.tile(self.transfer_schedule(), self.num_blocks)


@struct.dataclass
class Rollout:
  """What one call of :func:`generate` returns (a pytree).

  Attributes:
    tokens: ``[B, P + G]`` int32, the final canvas (prompt ‖ completion).
    commit_timestep: ``[B, G]`` int32, the timestep (0-based) at which each completion token was committed.
    branch_timesteps: ``[B, S]`` int32, the requested branch timesteps (``-1`` = unused slot).
    branch_canvas: ``[B, S, G]`` int32, the completion part of the input canvas ``x_t`` of each branch
      timestep (the prompt part is ``tokens[:, :P]``); MASK marks the positions the action fills.
    branch_logits: ``[B, S, G, V]`` (or ``[B, S, G, k]`` with top-k caching) logits that timestep ``t``
      sampled from (after CFG, before temperature), in the model's compute dtype.
    branch_logit_ids: ``[B, S, G, k]`` int32 vocabulary ids of ``branch_logits`` with top-k caching;
      ``None`` when the full vocabulary is cached.
    behaviour_logp: ``[B, G]`` float32, each token's log-prob under the distribution it was drawn
      from at its commit timestep: ``log softmax(logits / τ)`` of the logits the sampler used there
      (block-cached or full forward; τ = 1 when greedy), MASK excluded (:func:`behaviour_logprobs`).
  """

  tokens: Array
  commit_timestep: Array
  branch_timesteps: Array
  branch_canvas: Array
  branch_logits: Array
  branch_logit_ids: Optional[Array] = None
  behaviour_logp: Optional[Array] = None

  @property
  def completion(self) -> Array:
    """``[B, G]`` completion tokens."""
    return self.tokens[:, self.tokens.shape[1] - self.commit_timestep.shape[1]:]


def action_logits(logits: Array, mask_id: int) -> Array:
  """fp32 logits with the MASK token removed from the action space (its logit set to ``−∞``).

  The single definition of the action space: the sampler, the branch resampler and every
  log-prob in ``rl/`` go through it.
  """
  logits = logits.astype(jnp.float32)
  return logits.at[..., mask_id].set(-jnp.inf)


def gumbel_argmax(key: Array, logits: Array, temperature: float) -> Array:
  """``argmax(logits / τ + Gumbel)`` in fp32 (``τ = 0``: argmax). Equivalent to LLaDA's float64
  ``exp(logits) / (−log u)^τ`` form."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
  return jnp.argmax(logits / temperature + gumbel, axis=-1).astype(jnp.int32)


def behaviour_logprobs(logits: Array, tokens: Array, temperature: float) -> Array:
  """``log softmax(logits / τ)`` at ``tokens`` (τ = 0: the untempered softmax): ``[..., V]`` fp32
  action logits and ``[...]`` int ids -> ``[...]`` float32."""
  scaled = logits if temperature == 0 else logits / temperature
  picked = jnp.take_along_axis(scaled, tokens[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(scaled, axis=-1)


def _timestep_keys(key: Array, timestep: Array) -> tuple[Array, Array]:
  """(gumbel key, remask key) for global timestep ``timestep``: shared with the NumPy test reference."""
  k = jax.random.fold_in(key, timestep)
  return jax.random.split(k)


def _guided(logits: Array, batch: int, cfg_scale: float) -> Array:
  if cfg_scale == 0:
    return logits
  cond, uncond = logits[:batch], logits[batch:]
  return uncond + (cfg_scale + 1.0) * (cond - uncond)


def generate(graphdef: nnx.GraphDef, params: nnx.State, prompt_tokens: Array,
             prompt_lengths: Array, key: Array, settings: SamplerSettings,
             branch_timesteps: Array | None = None) -> Rollout:
  """Runs LLaDA's sampler; the whole loop over blocks and timesteps is one jitted ``lax.fori_loop``.

  Args:
    graphdef, params: the split model.
    prompt_tokens: ``[B, P]`` int32, left-padded prompts.
    prompt_lengths: ``[B]`` int32, real prompt lengths (for the padding mask).
    key: PRNG key (Gumbel noise and random remasking).
    settings: static :class:`SamplerSettings`.
    branch_timesteps: optional ``[B, S]`` int32 timesteps whose states to cache (``-1`` = none).

  Returns:
    A :class:`Rollout`.
  """
  return _generate_jit(graphdef, params, prompt_tokens, prompt_lengths, key, settings, branch_timesteps)


@struct.dataclass
class BranchCache:
  """The states cached for DiSPO's branches (see :class:`Rollout`): ``canvas [B, S, G]``,
  ``logits [B, S, G, W]`` and, with top-k caching, ``ids [B, S, G, k]``."""

  canvas: Array
  logits: Array
  ids: Optional[Array]


@struct.dataclass
class LoopState:
  """The carry of the denoising loop.

  Attributes:
    canvas: ``[B, P + G]`` int32, prompt ‖ completion (MASK where not yet committed).
    commit_timestep: ``[B, G]`` int32, the timestep each token was committed at (``-1``: not yet).
    behaviour_logp: ``[B, G]`` float32, each committed token's log-prob at its commit timestep.
    cache: the branch-state cache.
    kv: every layer's keys and values of the canvas at the last refresh (``kv_cache="dual"``).
    t: the timestep (int32 scalar).
    block, block_timestep: the current block and the timesteps spent in it (int32 scalars).
  """

  canvas: Array
  commit_timestep: Array
  behaviour_logp: Array
  cache: BranchCache
  kv: Optional[llada.KVCache]
  t: Array
  block: Array
  block_timestep: Array


@struct.dataclass
class LoopContext:
  """What every timestep reads and never changes (a pytree; ``model`` and ``settings`` are static).

  Attributes:
    model: the merged LLaDA module.
    settings: the static :class:`SamplerSettings`.
    key_mask: ``[B(·2 with CFG), P + G]`` bool attention mask, or None.
    branch_timesteps: ``[B, S]`` int32 timesteps whose states are cached (``-1``: unused slot).
    schedule: ``[timesteps_per_block]`` int32 tokens committed per timestep of a block.
    key: the rollout's PRNG key.
    prompt_length: P, the (padded) prompt width.
  """

  model: llada.LLaDA = struct.field(pytree_node=False)
  settings: SamplerSettings = struct.field(pytree_node=False)
  key_mask: Optional[Array]
  branch_timesteps: Array
  schedule: Array
  key: Array
  prompt_length: int = struct.field(pytree_node=False)


def _hidden(ctx: LoopContext, x: Array) -> Array:
  """Hidden states of the canvas (and of its prompt-masked copy under CFG)."""
  s, p = ctx.settings, ctx.prompt_length
  if s.cfg_scale > 0:
    x = jnp.concatenate([x, x.at[:, :p].set(s.mask_id)], axis=0)
  return ctx.model.hidden_states(x, ctx.key_mask)


def _head(ctx: LoopContext, h: Array, batch: int) -> Array:
  return _guided(ctx.model.logits(h), batch, ctx.settings.cfg_scale)


def _cache_states(ctx: LoopContext, hit: Array, x: Array, h: Array, cache: BranchCache
                  ) -> BranchCache:
  """Writes this timestep's input canvas and completion logits into the slots ``hit [B, S]``."""
  s, b, p = ctx.settings, x.shape[0], ctx.prompt_length
  logits = _head(ctx, h[:, p:], b)  # [B, G, V]
  if s.cache_top_k is None:
    values, ids = logits, cache.ids
  else:
    values, top_ids = jax.lax.top_k(action_logits(logits, s.mask_id), cache.logits.shape[-1])
    ids = jnp.where(hit[:, :, None, None], top_ids[:, None], cache.ids)
  values = jnp.where(hit[:, :, None, None], values[:, None].astype(cache.logits.dtype),
                     cache.logits)
  canvas = jnp.where(hit[:, :, None], x[:, None, p:], cache.canvas)
  return BranchCache(canvas, values, ids)


def _cache_on_hits(ctx: LoopContext, hits: Array, x: Array, h: Array, cache: BranchCache
                   ) -> BranchCache:
  """:func:`_cache_states` at timesteps where some slot is hit (the logits are only computed then)."""
  return jax.lax.cond(jnp.any(hits), lambda c: _cache_states(ctx, hits, x, h, c), lambda c: c,
                      cache)


def _transfer(ctx: LoopContext, state: LoopState, logits: Array, x_window: Array, offset
              ) -> tuple:
  """Candidates and the positions committed at this timestep in the window (``[B, W]`` each)."""
  s, t, block = ctx.settings, state.t, state.block
  fast_dllm = s.fast_dllm_threshold
  k_t = 1 if fast_dllm else ctx.schedule[jnp.minimum(state.block_timestep, s.timesteps_per_block - 1)]
  gumbel_key, remask_key = _timestep_keys(ctx.key, t)
  x0 = gumbel_argmax(gumbel_key, logits, s.temperature)
  if s.remasking == "low_confidence":
    probs = jax.nn.softmax(logits, axis=-1)
    confidence = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
  else:
    confidence = jax.random.uniform(remask_key, x0.shape, jnp.float32)
  width = x_window.shape[1]
  eligible = ((x_window == s.mask_id)
              & (offset + jnp.arange(width) < (block + 1) * s.block_length)[None])
  confidence = jnp.where(eligible, confidence, -jnp.inf)
  k_max = 1 if fast_dllm else int(s.transfer_schedule().max())
  _, top_idx = jax.lax.top_k(confidence, k_max)  # [B, k_max]
  chosen = jnp.arange(k_max)[None, :] < k_t
  b = x_window.shape[0]
  transfer = jnp.zeros((b, width), bool).at[jnp.arange(b)[:, None], top_idx].max(chosen)
  if fast_dllm:
    transfer = transfer | (confidence >= s.threshold)
  elif s.threshold is not None:
    transfer = transfer | (confidence > s.threshold)
  return x0, transfer & eligible


def _branch_hits(ctx: LoopContext, state: LoopState) -> Array:
  """``[B, S]`` bool: the branch slots to (over)write with this timestep's input state.

  Plain schedule: the timestep index equals the requested one. Threshold decoding (variable timestep
  counts) matches progress instead: a requested timestep ``t`` means the level ``n_t`` of tokens the
  plain schedule commits before ``t``, and the state kept is the input of the last timestep that
  starts with at most ``n_t`` tokens committed (the timestep that crosses the level; it always exists).
  Slots are written at every timestep that could be that one (the level lies within the current
  block's masked positions), the last write wins.
  """
  s = ctx.settings
  if s.threshold is None:
    return ctx.branch_timesteps == state.t
  planned = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(jnp.asarray(s.commits_per_timestep()))])
  level = planned[jnp.maximum(ctx.branch_timesteps, 0)]  # [B, S]
  committed = jnp.sum(state.commit_timestep >= 0, axis=-1)[:, None]  # [B, 1]
  window = jax.lax.dynamic_slice_in_dim(state.canvas, ctx.prompt_length
                                        + state.block * s.block_length, s.block_length, axis=1)
  open_in_block = jnp.sum(window == s.mask_id, axis=-1)[:, None]
  return (ctx.branch_timesteps >= 0) & (committed <= level) & (level < committed + open_in_block)


def denoise_timestep(state: LoopState, ctx: LoopContext) -> LoopState:
  """One timestep: forward, cache (at branch states), candidates, commit.

  Candidates are drawn over a window: the current block, or (``allow_mask_action``) the whole
  completion, where a still-masked position left of the block stays eligible as in LLaDA.
  """
  s, p, t = ctx.settings, ctx.prompt_length, state.t
  width = s.gen_length if s.allow_mask_action else s.block_length
  offset = 0 if s.allow_mask_action else state.block * s.block_length
  x = state.canvas
  hits = _branch_hits(ctx, state)
  if s.kv_cache == "dual":
    h_window, cache, kv = _cached_hidden(ctx, state, hits, offset, width)
  else:
    h = _hidden(ctx, x)
    cache = _cache_on_hits(ctx, hits, x, h, state.cache)
    h_window, kv = jax.lax.dynamic_slice_in_dim(h, p + offset, width, axis=1), None
  logits = _head(ctx, h_window, x.shape[0])
  logits = (logits.astype(jnp.float32) if s.allow_mask_action
            else action_logits(logits, s.mask_id))  # [B, width, V] fp32
  x_window = jax.lax.dynamic_slice_in_dim(x, p + offset, width, axis=1)
  x0, transfer = _transfer(ctx, state, logits, x_window, offset)
  x_window = jnp.where(transfer, x0, x_window)
  x = jax.lax.dynamic_update_slice_in_dim(x, x_window, p + offset, axis=1)
  c_window = jax.lax.dynamic_slice_in_dim(state.commit_timestep, offset, width, axis=1)
  commit_timestep = jax.lax.dynamic_update_slice_in_dim(
      state.commit_timestep, jnp.where(transfer, t, c_window), offset, axis=1)
  lp_window = jax.lax.dynamic_slice_in_dim(state.behaviour_logp, offset, width, axis=1)
  drawn = behaviour_logprobs(logits, x0, s.temperature)
  behaviour_logp = jax.lax.dynamic_update_slice_in_dim(
      state.behaviour_logp, jnp.where(transfer, drawn, lp_window), offset, axis=1)
  if s.threshold is None:  # the plain schedule: every block takes exactly timesteps_per_block timesteps
    block, block_timestep = (t + 1) // s.timesteps_per_block, (t + 1) % s.timesteps_per_block
  else:  # the next block starts as soon as every row has filled this one
    finished = ~jnp.any(x_window == s.mask_id)
    block = state.block + finished.astype(jnp.int32)
    block_timestep = jnp.where(finished, 0, state.block_timestep + 1)
  return LoopState(x, commit_timestep, behaviour_logp, cache, kv, t + 1, block, block_timestep)


def _cached_hidden(ctx: LoopContext, state: LoopState, hits: Array, offset, width: int):
  """Fast-dLLM's dual cache: ``(hidden states of the block [B, W, d], branch cache, kv)``.

  At the first timestep of every block one full forward recomputes the whole canvas and keeps every
  layer's keys and values: the prefix (prompt and finished blocks) and the suffix (later, still
  masked blocks). The block's other timesteps run the model on the block's positions only, attending
  to those cached keys and values and the block's fresh ones. Approximate: with bidirectional
  attention the prefix's and suffix's keys would change as the block fills; they are refreshed
  only at the next block.

  The states DiSPO branches from are a full forward's (the policy's own logits at ``x_t``): at a
  timestep some row branches from that is not a block's first, one more full forward fills the branch
  cache only. Its keys and values are dropped and the tokens are committed from the block path,
  so a row's rollout never depends on the branch timesteps (its own or its batch-mates').
  """
  p, x = ctx.prompt_length, state.canvas

  def refresh(_):
    h, kv = ctx.model.hidden_states_and_kv(x, ctx.key_mask)
    cache = _cache_on_hits(ctx, hits, x, h, state.cache)
    return jax.lax.dynamic_slice_in_dim(h, p + offset, width, axis=1), cache, kv

  def block(_):
    tokens = jax.lax.dynamic_slice_in_dim(x, p + offset, width, axis=1)
    h = ctx.model.block_hidden_states(tokens, p + offset, state.kv, ctx.key_mask)
    branch_state = lambda c: _cache_states(ctx, hits, x, _hidden(ctx, x), c)
    cache = jax.lax.cond(jnp.any(hits), branch_state, lambda c: c, state.cache)
    return h.astype(state.kv.k.dtype), cache, state.kv

  return jax.lax.cond(state.block_timestep == 0, refresh, block, None)


def _initial_state(settings: SamplerSettings, prompt_tokens: Array, n_states: int,
                   cache_width: int, model: llada.LLaDA) -> LoopState:
  s, (b, _), g = settings, prompt_tokens.shape, settings.gen_length
  canvas = jnp.concatenate(
      [prompt_tokens.astype(jnp.int32), jnp.full((b, g), s.mask_id, jnp.int32)], axis=1)
  cfg = model.cfg
  cache = BranchCache(
      canvas=jnp.full((b, n_states, g), s.mask_id, jnp.int32),
      logits=jnp.zeros((b, n_states, g, cache_width), cfg.jnp_compute_dtype),
      ids=None if s.cache_top_k is None else jnp.zeros((b, n_states, g, cache_width), jnp.int32))
  kv = None
  if s.kv_cache == "dual":
    shape = (cfg.n_layers, b, canvas.shape[1], cfg.n_heads, cfg.head_dim)
    kv = llada.KVCache(jnp.zeros(shape, cfg.jnp_compute_dtype),
                       jnp.zeros(shape, cfg.jnp_compute_dtype))
  zero = jnp.zeros((), jnp.int32)
  return LoopState(canvas, jnp.full((b, g), -1, jnp.int32), jnp.zeros((b, g), jnp.float32), cache,
                   kv, zero, zero, zero)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _generate_jit(graphdef, params, prompt_tokens, prompt_lengths, key, settings, branch_timesteps):
  s = settings
  b, p = prompt_tokens.shape
  if branch_timesteps is None:
    branch_timesteps = jnp.full((b, 0), -1, jnp.int32)
  model = llada.merge_model(graphdef, params)
  key_mask = None
  if s.mask_padding:
    start = p - prompt_lengths.astype(jnp.int32)
    key_mask = jnp.arange(p + s.gen_length)[None, :] >= start[:, None]
    if s.cfg_scale > 0:
      key_mask = jnp.concatenate([key_mask, key_mask], axis=0)
  ctx = LoopContext(model=model, settings=s, key_mask=key_mask,
                    branch_timesteps=branch_timesteps.astype(jnp.int32),
                    schedule=jnp.asarray(s.transfer_schedule()), key=key, prompt_length=p)
  vocab = model.cfg.vocab_size
  cache_width = vocab if s.cache_top_k is None else min(s.cache_top_k, vocab)
  state = _initial_state(s, prompt_tokens, branch_timesteps.shape[1], cache_width, model)
  if s.threshold is None:
    state = jax.lax.fori_loop(0, s.num_timesteps, lambda _, st: denoise_timestep(st, ctx), state)
  else:  # variable length: stop when the completion is full, after at most `max_timesteps` timesteps
    running = lambda st: (st.t < s.max_timesteps) & (st.block < s.num_blocks)
    state = jax.lax.while_loop(running, functools.partial(denoise_timestep, ctx=ctx), state)
  return Rollout(tokens=state.canvas, commit_timestep=state.commit_timestep,
                 branch_timesteps=ctx.branch_timesteps, branch_canvas=state.cache.canvas,
                 branch_logits=state.cache.logits, branch_logit_ids=state.cache.ids,
                 behaviour_logp=state.behaviour_logp)

