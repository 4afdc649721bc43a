"""diffu-GRPO (d1): every completion token scored on the fully masked completion (the one-step
mean-field surrogate), with random prompt masks, under the clipped ratio loss and the k3 KL."""

from __future__ import annotations

import jax.numpy as jnp

from dispo_jax.rl.logprobs import surrogate_logprobs
from dispo_jax.rl.objectives.base import Objective, base_key, register_objective


@register_objective("diffu_grpo")
class DiffuGRPO(Objective):

  def logprobs(self, apply, batch, key, s):
    masked = jnp.full(batch.completion.shape, s.mask_id, jnp.int32)
    return surrogate_logprobs(apply, batch.prompt_tokens, batch.prompt_key_mask, masked,
                              batch.completion, base_key(key), batch.row_ids,
                              p_mask_prompt=s.p_mask_prompt, mask_id=s.mask_id)
