"""Completion helpers: the completion mask up to and including the first EOS, and text decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def completion_mask(completion: Array, eos_id: int) -> Array:
  """``[..., G]`` bool: True up to and including the first EOS (all True if there is none)."""
  is_eos = (completion == eos_id).astype(jnp.int32)
  eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos
  return eos_before == 0


REWARD_TEXTS = ("whole", "first_eos")


def decode_completions(tokenizer, completions: Array | np.ndarray, eos_id: int,
                       text: str = "first_eos") -> list[str]:
  """Text of each ``[B, G]`` int completion row, special tokens dropped.

  ``text="first_eos"`` decodes up to (excluding) the row's first EOS; ``text="whole"`` decodes the
  whole row, so ordinary tokens after an EOS are kept (d1's training rule:
  ``batch_decode(completion_ids, skip_special_tokens=True)``).
  """
  if text not in REWARD_TEXTS:
    raise ValueError(f"text={text!r}: expected one of {list(REWARD_TEXTS)}")
  rows = np.asarray(completions).tolist()
  texts = []
  for row in rows:
    if text == "first_eos" and eos_id in row:
      row = row[: row.index(eos_id)]
    texts.append(tokenizer.decode(row, skip_special_tokens=True))
  return texts

