"""The state a run updates, as one pytree: what checkpoints save and an update takes and returns."""

from __future__ import annotations

from typing import Any

from flax import struct


@struct.dataclass
class TrainState:
  """Everything a run updates, as one pytree.

  Attributes:
    trainable: the parameters being trained (LoRA adapters, or every weight).
    frozen: the parameters that stay fixed (the base under LoRA; the KL reference copy otherwise).
    opt_state: the optimizer's state over ``trainable``.
    step: optimizer updates done (a host int, static).
  """

  trainable: Any
  frozen: Any
  opt_state: Any
  step: int = struct.field(pytree_node=False, default=0)

  @property
  def params(self) -> tuple[Any, Any]:
    return self.trainable, self.frozen
