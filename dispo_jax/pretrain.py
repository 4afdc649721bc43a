"""Masked-diffusion SFT with LLaDA's objective: the base model for the small-scale demos.

For each row, ``t ~ U(ε, 1)``; every completion token is masked with probability ``t`` (the prompt
never is); the loss is the cross-entropy on masked tokens weighted by ``1/t``, summed over the
completion and divided by its length (completions are padded with EOS, which the model learns to
emit). This is LLaDA's SFT recipe; ``python -m dispo_jax.train`` runs it as the base stage of the tiny
configurations.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dispo_jax.model import llada

Array = jax.Array


def sft_loss(graphdef, state, prompt: Array, prompt_key_mask: Array | None, completion: Array,
             key: Array, mask_id: int, eps: float = 1e-3) -> Array:
  """LLaDA's SFT loss on ``prompt [B, P] ‖ completion [B, G]`` (completion padded with EOS)."""
  b, g = completion.shape
  t_key, m_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (b, 1), minval=eps, maxval=1.0)
  masked = jax.random.uniform(m_key, (b, g)) < t
  canvas = jnp.concatenate([prompt, jnp.where(masked, mask_id, completion)], axis=1)
  key_mask = None
  if prompt_key_mask is not None:
    key_mask = jnp.concatenate([prompt_key_mask, jnp.ones((b, g), bool)], axis=1)
  logits = llada.forward(graphdef, state, canvas, key_mask)[:, prompt.shape[1]:]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, completion[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * masked / t) / (b * g)


def train_sft(graphdef, state, prompts: np.ndarray, prompt_lengths: np.ndarray,
              completions: np.ndarray, *, steps: int, batch_size: int, learning_rate: float,
              mask_id: int, seed: int = 0, mask_padding: bool = True,
              callback: Callable[[int, float], None] | None = None):
  """Adam SFT for ``steps`` minibatches drawn with replacement; returns the new state.

  Raises ``FloatingPointError`` at the first non-finite loss (as the RL update refuses non-finite
  steps), so a diverged base is never returned or cached."""
  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(optax.warmup_cosine_decay_schedule(
                        0.0, learning_rate, max(1, steps // 20), steps, learning_rate * 0.1),
                        weight_decay=0.01))
  opt_state = opt.init(state)
  p = prompts.shape[1]

  @jax.jit
  def step(state, opt_state, prompt, lengths, completion, key):
    key_mask = (jnp.arange(p)[None] >= (p - lengths)[:, None]) if mask_padding else None
    loss, grads = jax.value_and_grad(sft_loss, argnums=1)(graphdef, state, prompt, key_mask,
                                                          completion, key, mask_id)
    updates, opt_state = opt.update(grads, opt_state, state)
    return optax.apply_updates(state, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  for i in range(steps):
    idx = rng.integers(0, len(prompts), batch_size)
    state, opt_state, loss = step(state, opt_state, jnp.asarray(prompts[idx]),
                                  jnp.asarray(prompt_lengths[idx]), jnp.asarray(completions[idx]),
                                  jax.random.fold_in(key, i))
    loss = float(loss)
    if not math.isfinite(loss):  # nothing diverged is returned (the caller saves nothing)
      raise FloatingPointError(f"SFT step {i}: the loss is {loss}; the weights diverged")
    if callback is not None:
      callback(i, loss)
  return state
