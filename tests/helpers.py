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


class SafetensorsReadSpy:
  """Wraps ``safetensors.safe_open`` as :mod:`dispo_jax.model.checkpoint` uses it and records the
  bytes every read returns (whole tensors and slices), independently of the loader's own code.

  Use as ``monkeypatch.setattr(checkpoint, "safe_open", spy)``; ``spy.bytes_read`` is the total.
  """

  def __init__(self):
    from safetensors import safe_open
    self._open = safe_open
    self.bytes_read = 0
    self.reads: list[tuple[str, tuple[int, ...]]] = []

  def _record(self, name, array):
    self.bytes_read += array.nbytes
    self.reads.append((name, tuple(array.shape)))
    return array

  def __call__(self, path, framework="numpy"):
    spy = self

    class View:
      def __init__(self, view, name):
        self.view, self.name = view, name

      def get_shape(self):
        return self.view.get_shape()

      def __getitem__(self, index):
        return spy._record(self.name, self.view[index])

    class File:
      def __init__(self):
        self.cm = spy._open(path, framework=framework)

      def __enter__(self):
        self.f = self.cm.__enter__()
        return self

      def __exit__(self, *exc):
        return self.cm.__exit__(*exc)

      def keys(self):
        return self.f.keys()

      def get_slice(self, name):
        return View(self.f.get_slice(name), name)

      def get_tensor(self, name):
        return spy._record(name, self.f.get_tensor(name))

    return File()
