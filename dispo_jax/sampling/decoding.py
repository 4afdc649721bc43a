"""Completion helpers: the completion mask up to and including the first EOS, and text decoding."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def completion_mask(completion: Array, eos_id: int) -> Array:
  """``[..., G]`` bool: True up to and including the first EOS (all True if there is none)."""
  is_eos = (completion == eos_id).astype(jnp.int32)
  eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos
  return eos_before == 0


def decode_completions(tokenizer, completions: Array | np.ndarray, eos_id: int) -> list[str]:
  """Text of each ``[B, G]`` completion row up to (excluding) its first EOS, specials dropped."""
  rows = np.asarray(completions).tolist()
  texts = []
  for row in rows:
    if eos_id in row:
      row = row[: row.index(eos_id)]
    texts.append(tokenizer.decode(row, skip_special_tokens=True))
  return texts


def decode_completion(tokenizer, tokens: Sequence[int], eos_id: int) -> str:
  """One row of :func:`decode_completions`."""
  return decode_completions(tokenizer, np.asarray([list(tokens)]), eos_id)[0]
