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
import jax.numpy as jnp
from flax import nnx

from dispo_jax.model import llada
from dispo_jax.model.config import LLaDAConfig, LoRAConfig
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


def make_policy(cfg: LLaDAConfig, graphdef: nnx.GraphDef, base_state: nnx.State,
                lora: LoRAConfig | None = None, seed: int = 0, copy_reference: bool = True
                ) -> tuple[Policy, nnx.State, nnx.State]:
  """``(policy, trainable, frozen)`` from a base model (freshly initialised or loaded).

  LoRA (``lora`` given): fresh adapters are added (:func:`llada.add_lora`); trainable = the
  adapters, frozen = the base weights, which are also the reference. Full fine-tuning: trainable =
  all weights, frozen = a copy of them as the reference (``copy_reference=False`` shares the arrays,
  enough when β = 0).
  """
  if lora is not None:
    graphdef, lora_state, base = llada.add_lora(cfg, base_state, lora, seed=seed)
    return Policy(graphdef, True), lora_state, base
  frozen = jax.tree.map(jnp.copy, base_state) if copy_reference else base_state
  return Policy(graphdef, False), base_state, frozen
