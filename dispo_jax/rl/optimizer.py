"""The optimizer of every RL run (and of ``plan_scale``): AdamW after global-norm clipping."""

from __future__ import annotations

import dataclasses
import math

import optax

from dispo_jax.checks import require


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """Config section ``optim`` (d1's recipe: AdamW, lr 3e-6, β = (0.9, 0.99), wd 0.1, clip 0.2).

  Attributes:
    learning_rate: peak learning rate (finite, > 0).
    b1, b2: Adam's moment decay rates, in [0, 1).
    weight_decay: decoupled weight decay (>= 0).
    grad_clip: global gradient-norm clip (> 0).
    warmup_steps: linear warm-up from 0 over this many updates (0: none).
  """

  learning_rate: float = 3e-6
  b1: float = 0.9
  b2: float = 0.99
  weight_decay: float = 0.1
  grad_clip: float = 0.2
  warmup_steps: int = 0

  def __post_init__(self):
    checks = [
        ("learning_rate", math.isfinite(self.learning_rate) and self.learning_rate > 0,
         "finite and > 0"),
        ("b1", 0 <= self.b1 < 1, "in [0, 1)"),
        ("b2", 0 <= self.b2 < 1, "in [0, 1)"),
        ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0,
         "finite and >= 0"),
        ("grad_clip", math.isfinite(self.grad_clip) and self.grad_clip > 0, "finite and > 0"),
        ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
    ]
    require(self, checks)


def make_optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with an optional linear warm-up."""
  rate = (optax.linear_schedule(0.0, s.learning_rate, s.warmup_steps) if s.warmup_steps
          else s.learning_rate)
  return optax.chain(optax.clip_by_global_norm(s.grad_clip),
                     optax.adamw(rate, b1=s.b1, b2=s.b2, weight_decay=s.weight_decay))
