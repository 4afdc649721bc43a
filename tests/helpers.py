"""Shared test helpers: tiny HF-format LLaDA folders written from torch/numpy weights."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from dispo_jax.model.checkpoint import config_to_hf, hf_name_map


def random_hf_tensors(cfg, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
  """Random float32 tensors for every LLaDA checkpoint name, in torch layout ([out, in])."""
  rng = np.random.default_rng(seed)
  out = {}
  d, m, v = cfg.d_model, cfg.mlp_hidden_size, cfg.vocab_size
  shapes = {"wte": (v, d), "ln_f": (d,), "ff_out": (v, d), "q_proj": (d, d), "k_proj": (d, d),
            "v_proj": (d, d), "attn_out": (d, d), "ff_proj": (m, d), "up_proj": (m, d),
            "attn_norm": (d,), "ff_norm": (d,)}
  for name in hf_name_map(cfg):
    parts = name.split(".")
    key = parts[-2]
    if parts[2] == "blocks" and key == "ff_out":
      shape = (d, m)
    else:
      shape = shapes[key]
    if len(shape) == 1:
      out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      out[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
  return out


def write_hf_folder(folder: str, cfg, tensors: dict[str, np.ndarray], n_shards: int = 2,
                    hf_config: dict | None = None) -> None:
  """Writes ``tensors`` as a sharded HF folder with an index json and LLaDA's config.json."""
  os.makedirs(folder, exist_ok=True)
  names = sorted(tensors)
  chunks = [names[i::n_shards] for i in range(n_shards)]
  weight_map = {}
  for i, chunk in enumerate(chunks):
    file = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
    save_file({n: tensors[n] for n in chunk}, os.path.join(folder, file), metadata={"format": "pt"})
    weight_map.update({n: file for n in chunk})
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config if hf_config is not None else config_to_hf(cfg, "float32"), f)
