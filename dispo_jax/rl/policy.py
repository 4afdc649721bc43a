"""Policy parameterisations: LoRA adapters over a frozen base, or full fine-tuning.

Both give the learner the same functions over ``params = (trainable, frozen)``, each returning
``rl/``'s one forward convention ``apply(tokens, key_mask) -> logits``:

* ``bind(params, dropout_key)``: the policy being trained;
* ``bind_reference(params)``: the KL reference — the base model with adapters off (LoRA: no extra
  copy), or the frozen initial weights (full fine-tuning);
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
from dispo_jax.rl.logprobs import SplitApply


@dataclasses.dataclass(frozen=True)
class Policy:
  graphdef: nnx.GraphDef
  use_lora: bool

  def bind(self, params, dropout_key: jax.Array | None = None) -> SplitApply:
    """The policy's forward ``(tokens [R, L], key_mask [R, L] | None) -> logits [R, L, V]``,
    split into hidden states and head (log-probs run the head in chunks)."""
    return self._split(self.model_state(params), LoRACall(True, dropout_key))

  def bind_reference(self, params) -> SplitApply:
    """The KL reference's forward (same convention as :meth:`bind`)."""
    trainable, frozen = params
    if self.use_lora:
      return self._split((frozen, trainable), LoRACall(False))
    return self._split(frozen, LoRACall(False))

  def _split(self, state, lora: LoRACall) -> SplitApply:
    return SplitApply(
        hidden=lambda tokens, key_mask: llada.hidden_states(self.graphdef, state, tokens,
                                                            key_mask, lora=lora),
        head=lambda h: llada.lm_head(self.graphdef, state, h))

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
