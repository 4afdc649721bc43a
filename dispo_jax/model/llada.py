"""LLaDA in Flax NNX: a bidirectional Llama-style transformer for masked diffusion (docs/METHOD.md §3).

Every parameter carries ``logical_axes`` metadata; :mod:`dispo_jax.model.sharding` maps those names
to mesh axes through one table. The hot paths call the pure functions at the bottom of this file
(:func:`forward`, :func:`hidden_states`, :func:`lm_head`) on a split ``(graphdef, state)``.

Numerics follow LLaDA's reference implementation:
  * RMSNorm: normalise in fp32, cast back to the compute dtype, then multiply by the weight.
  * RoPE: rotate-half (not interleaved), frequencies and rotation in fp32.
  * Attention: bidirectional; an optional key-padding mask; softmax in fp32.
  * MLP: SwiGLU, ``ff_out(silu(ff_proj(x)) * up_proj(x))``.
  * No biases, no q/k norm, no embedding or logit scaling, untied LM head.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional
import zlib

import jax
import jax.numpy as jnp
from flax import nnx

from dispo_jax.model.config import LLaDAConfig, LoRAConfig
from dispo_jax.model import sharding
from dispo_jax.model.sharding import constrain

Array = jax.Array


class LoRAParam(nnx.Param):
  """A LoRA adapter matrix: a separate variable type, so ``nnx.split(model, LoRAParam, ...)`` gives
  the trainable adapters apart from the frozen base weights."""


class LoRACall(NamedTuple):
  """How adapters run in one forward: ``enabled=False`` is the base (reference) model; ``key``
  drives LoRA dropout (None: no dropout)."""
  enabled: bool = True
  key: Optional[Array] = None


_NO_LORA = LoRACall(enabled=False)

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype,
           init: str = "normal") -> nnx.Param:
  if init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=axes)


class Linear(nnx.Module):
  """Bias-free linear layer with kernel ``[in, out]`` (the transpose of torch's ``[out, in]``),
  with an optional LoRA adapter (``lora_a [in, r]``, ``lora_b [r, out]``, B initialised to 0)."""

  def __init__(self, in_features: int, out_features: int, axes: tuple[str, str],
               cfg: LLaDAConfig, *, rngs: nnx.Rngs, name: str = "",
               lora: LoRAConfig | None = None):
    self.kernel = _param(rngs, (in_features, out_features), axes, cfg.jnp_param_dtype)
    self.compute_dtype = cfg.jnp_compute_dtype
    self.has_lora = lora is not None and name in lora.targets
    if self.has_lora:
      a = jax.random.normal(rngs.lora(), (in_features, lora.rank), jnp.float32)
      self.lora_a = LoRAParam((a / jnp.sqrt(in_features)).astype(jnp.float32),
                              logical_axes=(axes[0], "lora_rank"))
      self.lora_b = LoRAParam(jnp.zeros((lora.rank, out_features), jnp.float32),
                              logical_axes=("lora_rank", axes[1]))
      self.lora_scale = lora.scale
      self.lora_dropout = lora.dropout
      self.lora_salt = zlib.crc32(name.encode())

  def __call__(self, x: Array, lora: LoRACall = _NO_LORA) -> Array:
    x = x.astype(self.compute_dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.compute_dtype))
    if self.has_lora and lora.enabled:
      if lora.key is not None and self.lora_dropout > 0:
        keep = jax.random.bernoulli(jax.random.fold_in(lora.key, self.lora_salt),
                                    1.0 - self.lora_dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(x.dtype)
      low = jnp.dot(x, self.lora_a[...].astype(self.compute_dtype))
      y = y + self.lora_scale * jnp.dot(low, self.lora_b[...].astype(self.compute_dtype))
    return y


class RMSNorm(nnx.Module):
  """LLaDA's RMSNorm: fp32 normalisation, cast back, then scale by the weight."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
    self.weight = _param(rngs, (cfg.d_model,), ("norm",), cfg.jnp_param_dtype, init="ones")
    self.eps = cfg.rms_norm_eps
    self.compute_dtype = cfg.jnp_compute_dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.compute_dtype) * x32.astype(self.compute_dtype)


def rope_tables(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """fp32 ``(cos, sin)`` tables of shape ``positions.shape + (head_dim,)`` (rotate-half layout)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotate-half RoPE in fp32. ``x``: ``[B, L, H, Dh]``; ``cos``/``sin``: ``[B, L, Dh]``."""
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)


class KVCache(NamedTuple):
  """Keys and values of a canvas: ``[B, L, H, Dh]`` for one layer, ``[n_layers, B, L, H, Dh]``
  for the model."""

  k: Array
  v: Array


class Attention(nnx.Module):
  """Bidirectional multi-head attention with LLaDA's projection names."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
    d = cfg.d_model
    kw = dict(rngs=rngs, lora=lora)
    self.q_proj = Linear(d, d, ("embed", "heads"), cfg, name="q_proj", **kw)
    self.k_proj = Linear(d, d, ("embed", "heads"), cfg, name="k_proj", **kw)
    self.v_proj = Linear(d, d, ("embed", "heads"), cfg, name="v_proj", **kw)
    self.attn_out = Linear(d, d, ("heads", "embed"), cfg, name="attn_out", **kw)
    self.n_heads = cfg.n_heads
    self.head_dim = cfg.head_dim

  def __call__(self, x: Array, cos: Array, sin: Array, key_mask: Array | None,
               lora: LoRACall = _NO_LORA) -> Array:
    return self.with_kv(x, cos, sin, key_mask, lora)[0]

  def with_kv(self, x: Array, cos: Array, sin: Array, key_mask: Array | None,
              lora: LoRACall = _NO_LORA, cache: KVCache | None = None, offset=0
              ) -> tuple[Array, Array, Array]:
    """``(output, k, v)`` for the rows ``x [B, l, d]``; ``k, v`` are ``[B, L, H, Dh]``.

    Without ``cache`` the queries attend to ``x``'s own keys (``L = l``). With ``cache`` (keys and
    values of a whole canvas, ``[B, L, H, Dh]``) ``x`` is the slice at ``offset``: its fresh keys and
    values replace the cached ones there and its queries attend to all ``L`` positions.
    """
    b, l, _ = x.shape
    split = lambda t: t.reshape(b, l, self.n_heads, self.head_dim)
    q = apply_rope(split(self.q_proj(x, lora)), cos, sin)
    k = apply_rope(split(self.k_proj(x, lora)), cos, sin)
    v = split(self.v_proj(x, lora))
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache.k.astype(k.dtype), k, offset, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache.v.astype(v.dtype), v, offset, axis=1)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(self.head_dim))
    if key_mask is not None:
      scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, self.n_heads * self.head_dim)
    return self.attn_out(out, lora), k, v


class MLP(nnx.Module):
  """SwiGLU: ``ff_out(silu(ff_proj(x)) * up_proj(x))`` (``ff_proj`` is the gate)."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
    d, m = cfg.d_model, cfg.mlp_hidden_size
    kw = dict(rngs=rngs, lora=lora)
    self.ff_proj = Linear(d, m, ("embed", "mlp"), cfg, name="ff_proj", **kw)
    self.up_proj = Linear(d, m, ("embed", "mlp"), cfg, name="up_proj", **kw)
    self.ff_out = Linear(m, d, ("mlp", "embed"), cfg, name="ff_out", **kw)

  def __call__(self, x: Array, lora: LoRACall = _NO_LORA) -> Array:
    return self.ff_out(jax.nn.silu(self.ff_proj(x, lora)) * self.up_proj(x, lora), lora)


class Block(nnx.Module):
  """Pre-norm transformer block: ``x + attn(attn_norm(x))`` then ``x + mlp(ff_norm(x))``."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
    self.attn_norm = RMSNorm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs, lora=lora)
    self.ff_norm = RMSNorm(cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs, lora=lora)

  def __call__(self, x: Array, cos: Array, sin: Array, key_mask: Array | None,
               lora: LoRACall = _NO_LORA) -> Array:
    return self.with_kv(x, cos, sin, key_mask, lora)[0]

  def with_kv(self, x: Array, cos: Array, sin: Array, key_mask: Array | None,
              lora: LoRACall = _NO_LORA, cache: KVCache | None = None, offset=0
              ) -> tuple[Array, Array, Array]:
    """``(output, k, v)``; see :meth:`Attention.with_kv` for ``cache`` and ``offset``."""
    out, k, v = self.attn.with_kv(self.attn_norm(x), cos, sin, key_mask, lora, cache, offset)
    x = x + out
    return x + self.mlp(self.ff_norm(x), lora), k, v


def _remat_block(block: Block, x: Array, cos: Array, sin: Array, key_mask: Array | None,
                 lora: LoRACall) -> Array:
  """``block(x, ...)`` whose activations are recomputed in the backward pass.

  A pure ``jax.checkpoint`` over the block's split ``(graphdef, state)`` rather than
  ``nnx.remat``: NNX's lifted transform updates the block's variables in place, which fails when
  the module was merged at an outer trace level and is called inside a ``lax`` loop (the sampler's
  ``fori_loop``, the learner's ``scan``). This form reads the variables and never writes them.
  """
  graphdef, state = nnx.split(block)

  @jax.checkpoint
  def run(state, x, cos, sin, key_mask, key):
    return nnx.merge(graphdef, state)(x, cos, sin, key_mask, LoRACall(lora.enabled, key))

  return run(state, x, cos, sin, key_mask, lora.key)


class LLaDA(nnx.Module):
  """The LLaDA transformer. ``__call__(tokens [B, L] int) -> logits [B, L, V]``."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
    if lora is not None and "lora" not in rngs:
      raise ValueError("a model with LoRA adapters needs an 'lora' rng stream, e.g. "
                       "nnx.Rngs(params=0, lora=1), so the base weights do not depend on it")
    self.cfg = cfg
    self.lora = lora
    self.wte = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.jnp_param_dtype)
    self.blocks = nnx.List([Block(cfg, rngs=rngs, lora=lora) for _ in range(cfg.n_layers)])
    self.ln_f = RMSNorm(cfg, rngs=rngs)
    self.ff_out = Linear(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs)

  def hidden_states(self, tokens: Array, key_mask: Array | None = None,
                    positions: Array | None = None, lora: LoRACall = LoRACall()) -> Array:
    """Final-norm hidden states ``[B, L, d_model]`` in the compute dtype.

    ``lora`` only matters for a model built with adapters: ``LoRACall(enabled=False)`` runs the base
    model (the reference policy); ``LoRACall(key=k)`` applies LoRA dropout.
    """
    cfg = self.cfg
    x, cos, sin = self._embed(tokens, positions)
    enabled = bool(lora.enabled and self.lora is not None)

    for i, block in enumerate(self.blocks):
      key = None if lora.key is None else jax.random.fold_in(lora.key, i)
      call = LoRACall(enabled, key)
      x = (_remat_block(block, x, cos, sin, key_mask, call) if cfg.remat
           else block(x, cos, sin, key_mask, call))
      x = constrain(x, "batch", "length", "embed")
    return self.ln_f(x)

  def _embed(self, tokens: Array, positions: Array | None = None
             ) -> tuple[Array, Array, Array]:
    """``(embeddings [B, L, d] in the compute dtype, RoPE cos, sin)``; ``positions`` default to
    ``0..L-1``. The embeddings carry the block-boundary sharding constraint."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
    x = jnp.take(self.wte[...], tokens, axis=0).astype(self.cfg.jnp_compute_dtype)
    return constrain(x, "batch", "length", "embed"), cos, sin

  def hidden_states_and_kv(self, tokens: Array, key_mask: Array | None = None
                           ) -> tuple[Array, KVCache]:
    """Hidden states of the whole canvas and every layer's keys and values
    (:class:`KVCache` of ``[n_layers, B, L, H, Dh]``), for the sampler's block cache."""
    x, cos, sin = self._embed(tokens)
    ks, vs = [], []
    for block in self.blocks:
      x, k, v = block.with_kv(x, cos, sin, key_mask)
      x = constrain(x, "batch", "length", "embed")
      ks.append(k)
      vs.append(v)
    return self.ln_f(x), KVCache(jnp.stack(ks), jnp.stack(vs))

  def block_hidden_states(self, tokens: Array, offset, cache: KVCache,
                          key_mask: Array | None = None) -> Array:
    """Hidden states ``[B, l, d_model]`` of the slice ``tokens [B, l]`` at ``offset`` of a canvas
    whose other positions' keys and values come from ``cache`` (Fast-dLLM's approximate cache)."""
    b, l = tokens.shape
    x, cos, sin = self._embed(tokens, jnp.broadcast_to(offset + jnp.arange(l, dtype=jnp.int32),
                                                       (b, l)))
    for i, block in enumerate(self.blocks):
      x = block.with_kv(x, cos, sin, key_mask, cache=KVCache(cache.k[i], cache.v[i]),
                        offset=offset)[0]
    return self.ln_f(x)

  def logits(self, hidden: Array) -> Array:
    """LM head: ``[..., d_model] -> [..., V]`` logits in the compute dtype."""
    return self.ff_out(hidden)

  def __call__(self, tokens: Array, key_mask: Array | None = None,
               positions: Array | None = None, lora: LoRACall = LoRACall()) -> Array:
    return self.logits(self.hidden_states(tokens, key_mask, positions, lora))


# ----------------------------------------------------------------------------------------------
# Pure functions over (graphdef, state): what the sampler and the losses call.
# ----------------------------------------------------------------------------------------------


def init_model(cfg: LLaDAConfig, seed: int = 0, lora: LoRAConfig | None = None
               ) -> tuple[nnx.GraphDef, nnx.State]:
  """Randomly initialised ``(graphdef, state)`` on the default device."""
  return nnx.split(LLaDA(cfg, rngs=model_rngs(seed), lora=lora))


def abstract_model(cfg: LLaDAConfig, lora: LoRAConfig | None = None
                   ) -> tuple[nnx.GraphDef, nnx.State]:
  """``(graphdef, state)`` whose leaves are ``jax.ShapeDtypeStruct`` (no memory allocated)."""
  return nnx.split(nnx.eval_shape(lambda: LLaDA(cfg, rngs=model_rngs(0), lora=lora)))


def model_rngs(seed: int) -> nnx.Rngs:
  """Separate streams for base weights and adapters: the base is the same with or without LoRA."""
  return nnx.Rngs(params=seed, lora=seed + 1)


def forward(graphdef: nnx.GraphDef, state: nnx.State, tokens: Array,
            key_mask: Array | None = None, positions: Array | None = None,
            lora: LoRACall = LoRACall()) -> Array:
  """Logits ``[B, L, V]`` for ``tokens [B, L]`` (int32).

  Args:
    state: the model state; with adapters it may be given as several states merged here
      (e.g. ``(base, lora)``, see :func:`split_lora`).
    key_mask: optional ``[B, L]`` bool, False for keys no query may attend to (left padding).
    positions: optional ``[B, L]`` RoPE positions; default ``0..L-1`` for every row, as LLaDA.
    lora: adapters on/off and the dropout key (no effect without adapters).
  """
  return merge_model(graphdef, state)(tokens, key_mask, positions, lora)


def merge_model(graphdef: nnx.GraphDef, state) -> "LLaDA":
  """The module from a state, or from a tuple of states (e.g. ``(base, lora)``).

  The states are rebuilt (``tree.map`` identity) so that a state captured from an outer trace, e.g.
  frozen weights closed over by a ``lax.scan`` body, yields variables of the current trace.
  """
  states = state if isinstance(state, tuple) else (state,)
  return nnx.merge(graphdef, *(jax.tree.map(lambda x: x, s) for s in states))


def fold_lora(model: "LLaDA") -> nnx.State:
  """The base weights with every adapter folded in (``W + scale · A @ B`` for each adapted
  projection, in fp32, cast back to the kernel's dtype); ``model`` is changed in place."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, Linear) and module.has_lora:
      delta = module.lora_scale * (module.lora_a[...] @ module.lora_b[...])
      module.kernel[...] = (module.kernel[...].astype(jnp.float32) + delta).astype(
          module.kernel[...].dtype)
  _, _, base = nnx.split(model, LoRAParam, ...)
  return base


def add_lora(cfg: LLaDAConfig, base_state: nnx.State, lora: LoRAConfig, seed: int = 0
             ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """``(graphdef, lora_state, base_state)`` for a base model (e.g. a loaded checkpoint) plus fresh
  adapters; only the adapters are materialised (the jitted init's base weights are dead code)."""
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: LLaDA(cfg, rngs=model_rngs(seed), lora=lora)),
                             LoRAParam, ...)
  init = jax.jit(lambda: nnx.split(LLaDA(cfg, rngs=model_rngs(seed), lora=lora), LoRAParam, ...)[1])
  return graphdef, init(), base_state


def split_lora(graphdef: nnx.GraphDef, state: nnx.State
               ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """``(graphdef, lora_state, base_state)``: the trainable adapters apart from the frozen base."""
  graphdef, lora_state, base_state = nnx.split(nnx.merge(graphdef, state), LoRAParam, ...)
  return graphdef, lora_state, base_state


def hidden_states(graphdef: nnx.GraphDef, state: nnx.State, tokens: Array,
                  key_mask: Array | None = None, positions: Array | None = None,
                  lora: LoRACall = LoRACall()) -> Array:
  """Final-norm hidden states ``[B, L, d_model]``; apply :func:`lm_head` to any slice of them
  (arguments as :func:`forward`)."""
  return merge_model(graphdef, state).hidden_states(tokens, key_mask, positions, lora)


def lm_head(graphdef: nnx.GraphDef, state: nnx.State, hidden: Array) -> Array:
  """Logits ``[..., V]`` from hidden states ``[..., d_model]``."""
  return merge_model(graphdef, state).logits(hidden)


def count_params(state: Any) -> int:
  """Number of scalar parameters in a state (concrete or abstract)."""
  return sum(int(x.size) for x in jax.tree.leaves(state))


def init_sharded(cfg, mesh: jax.sharding.Mesh, seed: int = 0, rules=sharding.LOGICAL_AXIS_RULES,
                 lora=None):
  """Initialises the model directly into its sharding: no device ever holds all the weights.

  Returns ``(graphdef, state)`` with every parameter a global ``jax.Array`` sharded per the rules.
  """
  graphdef, abstract_state = abstract_model(cfg, lora)
  shardings = sharding.state_shardings(abstract_state, mesh, rules)

  def init():
    return nnx.split(LLaDA(cfg, rngs=model_rngs(seed), lora=lora))[1]

  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state
