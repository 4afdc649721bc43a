"""One-step surrogate log-probabilities: one forward pass serves diffu-GRPO and DiSPO.

The surrogate of ``log π(targets | state)`` is a single forward pass on a canvas in which

  * each prompt token is masked independently with probability ``p_mask_prompt`` (keyed, per row),
  * the completion is the given ``completion_canvas`` (MASK where the action is to be scored),

followed by ``log_softmax`` over the action space (:func:`dispo_jax.sampling.action_logits`) gathered
at the targets. diffu-GRPO passes a fully masked completion and the sampled completion as targets;
DiSPO passes the branch state ``x_t`` and its Z fillings as targets ``[R, Z, G]`` — every branch of a
state reads its labels from the same logits, so Z costs no extra forward pass.

Prompt masks are drawn per row from ``fold_in(key, row_id)``, so they do not depend on how a batch is
split into micro-batches: the old, reference and current log-probs of one inner iteration use the
same key and therefore exactly the same masks (ratio exactly 1 on the first inner update).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dispo_jax.sampling.sampler import action_logits

Array = jax.Array
# The one forward convention of rl/: apply(tokens [R, L] int32, key_mask [R, L] bool | None)
# -> logits [R, L, V]. Parameters (and a dropout key) are bound before (``Policy.bind``).
Apply = Callable[[Array, Array | None], Array]
HEAD_CHUNK = 32  # completion positions whose logits are live at once on the split-forward path


@dataclasses.dataclass(frozen=True)
class SplitApply:
  """An :data:`Apply` that also exposes its two halves, so log-probs can run the LM head in chunks.

  Attributes:
    hidden: ``(tokens [R, L], key_mask [R, L] | None) -> [R, L, d]`` final-norm hidden states.
    head: ``[..., d] -> [..., V]`` logits.
  """

  hidden: Callable[[Array, Array | None], Array]
  head: Callable[[Array], Array]

  def __call__(self, tokens: Array, key_mask: Array | None) -> Array:
    return self.head(self.hidden(tokens, key_mask))


def prompt_mask(key: Array, row_ids: Array, prompt_length: int, p_mask_prompt: float) -> Array:
  """``[R, P]`` bool: which prompt tokens to mask, independently per row with ``p_mask_prompt``."""
  def one(row):
    return jax.random.bernoulli(jax.random.fold_in(key, row), p_mask_prompt, (prompt_length,))
  return jax.vmap(one)(row_ids.astype(jnp.uint32))


def token_logprobs(logits: Array, targets: Array, mask_id: int, temperature: float = 1.0
                   ) -> Array:
  """``log softmax(action_logits(logits) / temperature)`` at ``targets`` (fp32).

  Branch targets are gathered from the one shared ``[R, G, V]`` log-normalised tensor (ids moved
  to a trailing axis), never from a copy broadcast to ``[R, Z, G, V]``: the backward's memory does
  not grow with the number of branches Z.

  Args:
    logits: ``[R, G, V]``.
    targets: ``[R, ..., G]`` int ids; extra middle axes (branches) share the logits.
  Returns:
    ``[R, ..., G]`` float32 log-probabilities.
  """
  logits = action_logits(logits, mask_id)
  if temperature != 1.0:
    logits = logits / temperature
  log_norm = jax.nn.logsumexp(logits, axis=-1)  # [R, G]
  flat = jnp.moveaxis(targets.reshape(targets.shape[0], -1, targets.shape[-1]), 1, -1)  # [R, G, Z]
  picked = jnp.take_along_axis(logits, flat, axis=-1) - log_norm[..., None]  # [R, G, Z]
  return jnp.moveaxis(picked, -1, 1).reshape(targets.shape)


def canvas_logprobs(apply: Apply, masked_prompt: Array,
                    prompt_key_mask: Array | None, completion_canvas: Array, targets: Array,
                    mask_id: int, temperature: float = 1.0) -> Array:
  """One forward pass on ``masked_prompt ‖ completion_canvas``; log-probs of ``targets`` (at
  ``temperature``: ``log softmax(logits / τ)``; 1 is the model's own distribution).

  Args:
    apply: ``(tokens [R, P+G], key_mask [R, P+G] | None) -> logits [R, P+G, V]``.
    masked_prompt: ``[R, P]`` int32 prompts, MASK where the prompt is masked.
    prompt_key_mask: ``[R, P]`` bool (False on padding) or None to attend to padding.
    completion_canvas: ``[R, G]`` int32; MASK wherever a target is scored.
    targets: ``[R, ..., G]`` int32 tokens whose log-probs are returned.
  Returns:
    ``[R, ..., G]`` float32; only entries at masked completion positions are meaningful.
  """
  p = masked_prompt.shape[1]
  canvas = jnp.concatenate([masked_prompt, completion_canvas], axis=1)
  key_mask = None
  if prompt_key_mask is not None:
    key_mask = jnp.concatenate(
        [prompt_key_mask, jnp.ones(completion_canvas.shape, bool)], axis=1)
  if isinstance(apply, SplitApply):
    return head_logprobs(apply.head, apply.hidden(canvas, key_mask)[:, p:], targets, mask_id,
                         temperature=temperature)
  return token_logprobs(apply(canvas, key_mask)[:, p:], targets, mask_id, temperature)


def head_logprobs(head: Callable[[Array], Array], hidden: Array, targets: Array, mask_id: int,
                  chunk: int = HEAD_CHUNK, temperature: float = 1.0) -> Array:
  """:func:`token_logprobs` of ``head(hidden)``, ``chunk`` completion positions at a time.

  Each chunk's LM head, fp32 log-softmax and gather run under ``jax.checkpoint`` in a ``lax.map``:
  the backward keeps only the ``[R, G, d]`` hidden states and recomputes one chunk's
  ``[R, chunk, V]`` logits at a time, so no ``[R, G, V]`` tensor (bf16 or fp32) lives through the
  backward (the chunked log-softmax of TRL and verl). A ``chunk`` that does not divide G (or G
  itself) runs in one piece.

  Args:
    head: ``[..., d] -> [..., V]`` logits.
    hidden: ``[R, G, d]`` hidden states of the completion positions.
    targets: ``[R, ..., G]`` int ids.
  Returns:
    ``[R, ..., G]`` float32 log-probabilities.
  """
  r, g, d = hidden.shape
  if g <= chunk or g % chunk:
    return token_logprobs(head(hidden), targets, mask_id, temperature)
  n = g // chunk
  hidden_chunks = jnp.moveaxis(hidden.reshape(r, n, chunk, d), 1, 0)  # [n, R, chunk, d]
  target_chunks = jnp.moveaxis(targets.reshape(targets.shape[:-1] + (n, chunk)), -2, 0)
  one = jax.checkpoint(lambda xs: token_logprobs(head(xs[0]), xs[1], mask_id, temperature))
  out = jax.lax.map(one, (hidden_chunks, target_chunks))  # [n, R, ..., chunk]
  return jnp.moveaxis(out, 0, -2).reshape(targets.shape)


def surrogate_logprobs(apply: Apply, prompt_tokens: Array, prompt_key_mask: Array | None,
                       completion_canvas: Array, targets: Array, key: Array, row_ids: Array, *,
                       p_mask_prompt: float, mask_id: int, temperature: float = 1.0) -> Array:
  """One forward pass; log-probs of ``targets`` at every completion position.

  Args:
    apply: the policy's forward (see :data:`Apply`).
    prompt_tokens: ``[R, P]`` int32 left-padded prompts.
    prompt_key_mask: ``[R, P]`` bool (False on padding) or None to attend to padding.
    completion_canvas: ``[R, G]`` int32; MASK wherever a target is scored.
    targets: ``[R, ..., G]`` int32 tokens whose log-probs are returned.
    key: the inner iteration's mask key. row_ids: ``[R]`` global row indices.
    temperature: the log-probs are ``log softmax(logits / temperature)``.
  Returns:
    ``[R, ..., G]`` float32; only entries at masked completion positions are meaningful.
  """
  p = prompt_tokens.shape[1]
  masked_prompt = jnp.where(prompt_mask(key, row_ids, p, p_mask_prompt), mask_id, prompt_tokens)
  return canvas_logprobs(apply, masked_prompt, prompt_key_mask, completion_canvas, targets,
                         mask_id, temperature)
