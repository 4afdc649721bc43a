"""Policy parameterisations: LoRA adapters over a frozen base, or full fine-tuning.

Both give the learner the same three functions over ``params = (trainable, frozen)``:

* ``apply(params, tokens, key_mask, dropout_key) -> logits``: the policy being trained;
* ``apply_reference(params, tokens, key_mask) -> logits``: the KL reference — the base model with
  adapters off (LoRA: no extra copy), or the frozen initial weights (full fine-tuning);
* ``model_state(params)``: what the sampler takes as the model state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from dispo_jax.model import llada
from dispo_jax.model.llada import LoRACall


@dataclasses.dataclass(frozen=True)
class Policy:
  graphdef: nnx.GraphDef
  use_lora: bool

  def apply(self, params, tokens, key_mask, dropout_key=None) -> jax.Array:
    return llada.forward(self.graphdef, self.model_state(params), tokens, key_mask,
                         lora=LoRACall(True, dropout_key))

  def apply_reference(self, params, tokens, key_mask) -> jax.Array:
    trainable, frozen = params
    if self.use_lora:
      return llada.forward(self.graphdef, (frozen, trainable), tokens, key_mask,
                           lora=LoRACall(False))
    return llada.forward(self.graphdef, frozen, tokens, key_mask)

  def model_state(self, params) -> Any:
    trainable, frozen = params
    return (frozen, trainable) if self.use_lora else trainable


def make_policy(graphdef: nnx.GraphDef, state: nnx.State, use_lora: bool
                ) -> tuple[Policy, nnx.State, nnx.State]:
  """``(policy, trainable, frozen)`` from a model (with adapters if ``use_lora``).

  LoRA: trainable = the adapters, frozen = the base weights. Full fine-tuning: trainable = all
  weights, frozen = a copy of them as the reference (skip it with β = 0 by passing the same arrays).
  """
  if use_lora:
    graphdef, lora_state, base_state = llada.split_lora(graphdef, state)
    if not jax.tree.leaves(lora_state):
      raise ValueError("use_lora=True but the model has no LoRA adapters (build it with a LoRAConfig)")
    return Policy(graphdef, True), lora_state, base_state
  frozen = jax.tree.map(lambda x: x.copy(), state)
  return Policy(graphdef, False), state, frozen
