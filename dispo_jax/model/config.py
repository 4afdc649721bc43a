"""LLaDA architecture configuration and presets.

A :class:`LLaDAConfig` is frozen and hashable, so it can be closed over by jitted functions
and passed as a static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# LLaDA-8B-Instruct's special token ids (its tokenizer_config.json).
LLADA_BOS_ID = 126080
LLADA_EOS_ID = 126081  # also the padding id
LLADA_MASK_ID = 126336
LLADA_START_HEADER_ID = 126346
LLADA_END_HEADER_ID = 126347
LLADA_EOT_ID = 126348

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
  """Architecture of a LLaDA-style bidirectional transformer (no biases, untied head).

  Attributes:
    vocab_size: rows of the embedding and the LM head.
    d_model: residual width.
    n_layers: number of transformer blocks.
    n_heads: attention heads (LLaDA uses as many key/value heads: no GQA).
    mlp_hidden_size: SwiGLU hidden width.
    rope_theta: RoPE base (rotate-half convention, computed in fp32).
    rms_norm_eps: RMSNorm epsilon.
    max_sequence_length: longest canvas the model was trained for.
    bos_token_id, eos_token_id, pad_token_id, mask_token_id: special ids.
    param_dtype: storage dtype of the parameters ("float32" | "bfloat16" | "float16").
    compute_dtype: dtype of activations and matmuls. Norms, RoPE and softmax run in fp32.
    remat: rematerialise each block in the backward pass (saves activation memory).
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  mlp_hidden_size: int
  rope_theta: float = 500_000.0
  rms_norm_eps: float = 1e-5
  max_sequence_length: int = 4096
  bos_token_id: int = LLADA_BOS_ID
  eos_token_id: int = LLADA_EOS_ID
  pad_token_id: int = LLADA_EOS_ID
  mask_token_id: int = LLADA_MASK_ID
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    problems = []
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden_size",
                 "max_sequence_length"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
        problems.append(f"{name} must be a positive int, got {getattr(self, name)!r}")
    if not problems and self.d_model % self.n_heads:
      problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    if not problems and (self.d_model // self.n_heads) % 2:
      problems.append(f"head_dim={self.d_model // self.n_heads} must be even for RoPE")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
      value = getattr(self, name)
      if isinstance(self.vocab_size, int) and not 0 <= value < self.vocab_size:
        problems.append(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name}={getattr(self, name)!r} is not one of {sorted(_DTYPES)}")
    if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
      problems.append("rope_theta and rms_norm_eps must be positive")
    if problems:
      raise ValueError("Invalid LLaDAConfig: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def jnp_param_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  @property
  def jnp_compute_dtype(self) -> Any:
    return _DTYPES[self.compute_dtype]

  def replace(self, **changes) -> "LLaDAConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Exact parameter count from the shapes (embedding + blocks + final norm + head)."""
    d, m, v = self.d_model, self.mlp_hidden_size, self.vocab_size
    per_block = 4 * d * d + 3 * d * m + 2 * d
    return 2 * v * d + self.n_layers * per_block + d


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Low-rank adapters as separate parameters: ``W x + (alpha / rank) · B(A(dropout(x)))``.

  The default targets are what d1's target list actually matched in LLaDA: q, k, v and up.
  """

  rank: int = 128
  alpha: float = 64.0
  dropout: float = 0.05
  targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj")

  def __post_init__(self):
    if self.rank <= 0:
      raise ValueError(f"LoRAConfig.rank must be positive, got {self.rank}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
    unknown = [t for t in self.targets if t not in LORA_TARGETS]
    if unknown or not self.targets:
      raise ValueError(f"LoRAConfig.targets {list(self.targets)}: unknown {unknown}; choose from "
                       f"{list(LORA_TARGETS)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _tiny_ids(vocab_size: int) -> dict[str, int]:
  """Special ids at the top of a small vocabulary: bos, eos(=pad), mask."""
  return dict(bos_token_id=vocab_size - 3, eos_token_id=vocab_size - 2,
              pad_token_id=vocab_size - 2, mask_token_id=vocab_size - 1)


PRESETS: dict[str, LLaDAConfig] = {
    # LLaDA-8B-Instruct exactly as published: 8,015,581,184 parameters.
    "llada_8b": LLaDAConfig(
        vocab_size=126_464, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12_288,
        rope_theta=500_000.0, rms_norm_eps=1e-5, max_sequence_length=4096,
        param_dtype="bfloat16", compute_dtype="bfloat16"),
    # CPU presets for tests, demos and benchmarks.
    "tiny": LLaDAConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=192,
                        max_sequence_length=512, **_tiny_ids(512)),
    "small": LLaDAConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=8,
                         mlp_hidden_size=768, max_sequence_length=1024, **_tiny_ids(4096)),
}


def get_config(name: str, **overrides) -> LLaDAConfig:
  """Returns preset ``name`` with ``overrides`` applied (e.g. ``vocab_size=64``)."""
  if name not in PRESETS:
    raise KeyError(f"Unknown LLaDA preset {name!r}; choose one of {sorted(PRESETS)}")
  base = PRESETS[name]
  if "vocab_size" in overrides and base.mask_token_id == base.vocab_size - 1:
    # Small presets keep their special ids at the top of whatever vocabulary they get.
    overrides = {**_tiny_ids(overrides["vocab_size"]), **overrides}
  return base.replace(**overrides)
