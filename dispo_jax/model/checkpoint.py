"""Hugging Face LLaDA checkpoints <-> Flax NNX state.

Layout of an HF LLaDA folder (LLaDA-8B-Instruct as published)::

  config.json                          LLaDA's config (d_model, n_layers, ...)
  model.safetensors.index.json         {"weight_map": {tensor name: shard file}} (sharded case)
  model-00001-of-00006.safetensors...  or a single model.safetensors

Loading streams one tensor slice at a time from its memory-mapped shard, transposes torch's ``[out, in]``
linear weights to ``[in, out]``, casts to the parameter dtype and places it straight into its target
sharding with ``jax.make_array_from_callback``: each process reads from the file only the slices
its devices own, so the whole model is never materialised on one device, nor on one host.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dispo_jax.model import sharding as sharding_lib
from dispo_jax.model.config import LLaDAConfig
from dispo_jax.model.llada import abstract_model

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
EXPORT_RECORD_FILE = "dispo_jax_export.json"  # how a training run's export was trained and decoded

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_FLOAT_DTYPES = ("F32", "BF16", "F16")  # safetensors dtypes a LLaDA checkpoint may store

# HF config.json key -> LLaDAConfig field.
_HF_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",  # LLaDA also stores embedding_size; both must agree.
    "d_model": "d_model",
    "n_layers": "n_layers",
    "n_heads": "n_heads",
    "mlp_hidden_size": "mlp_hidden_size",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "max_sequence_length": "max_sequence_length",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "mask_token_id": "mask_token_id",
}

# Features of LLaDA's HF config that this port does not implement: key -> the only accepted value.
_UNSUPPORTED_IF_NOT = {
    "weight_tying": False, "include_bias": False, "alibi": False, "rope": True,
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
    "attention_layer_norm": False, "scale_logits": False, "input_emb_norm": False,
}


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be loaded as the requested LLaDA model."""


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

_BLOCK_LINEARS = {  # HF name in a block -> NNX path inside blocks[i]
    "q_proj": ("attn", "q_proj", "kernel"),
    "k_proj": ("attn", "k_proj", "kernel"),
    "v_proj": ("attn", "v_proj", "kernel"),
    "attn_out": ("attn", "attn_out", "kernel"),
    "ff_proj": ("mlp", "ff_proj", "kernel"),
    "up_proj": ("mlp", "up_proj", "kernel"),
    "ff_out": ("mlp", "ff_out", "kernel"),
}
_BLOCK_NORMS = {"attn_norm": ("attn_norm", "weight"), "ff_norm": ("ff_norm", "weight")}


def hf_name_map(cfg: LLaDAConfig) -> dict[str, tuple[tuple[Any, ...], bool]]:
  """``{hf tensor name: (nnx state path, transpose)}`` for every tensor of the model."""
  names: dict[str, tuple[tuple[Any, ...], bool]] = {
      "model.transformer.wte.weight": (("wte",), False),
      "model.transformer.ln_f.weight": (("ln_f", "weight"), False),
      "model.transformer.ff_out.weight": (("ff_out", "kernel"), True),
  }
  for i in range(cfg.n_layers):
    prefix = f"model.transformer.blocks.{i}."
    for hf, path in _BLOCK_LINEARS.items():
      names[f"{prefix}{hf}.weight"] = (("blocks", i) + path, True)
    for hf, path in _BLOCK_NORMS.items():
      names[f"{prefix}{hf}.weight"] = (("blocks", i) + path, False)
  return names


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any], source: str = CONFIG_FILE, **dtype_overrides) -> LLaDAConfig:
  """Builds a :class:`LLaDAConfig` from LLaDA's ``config.json`` dict, rejecting unsupported features."""
  missing = [k for k in ("vocab_size", "d_model", "n_layers", "n_heads") if k not in hf]
  if missing:
    raise CheckpointError(f"{source}: missing required key(s) {missing}")
  for key, accepted in _UNSUPPORTED_IF_NOT.items():
    if key in hf and hf[key] is not None and hf[key] != accepted:
      raise CheckpointError(f"{source}: {key}={hf[key]!r} is not supported (only {accepted!r})")
  n_kv = hf.get("n_kv_heads")
  if n_kv is not None and n_kv != hf["n_heads"]:
    raise CheckpointError(f"{source}: n_kv_heads={n_kv} != n_heads={hf['n_heads']} (GQA is not "
                          "supported; LLaDA-8B has none)")
  vocab = hf.get("embedding_size") or hf["vocab_size"]
  if hf.get("embedding_size") and hf["embedding_size"] != hf["vocab_size"]:
    # LLaDA pads the embedding to embedding_size; the weights have that many rows.
    vocab = hf["embedding_size"]
  fields = {field: hf[key] for key, field in _HF_CONFIG_FIELDS.items() if hf.get(key) is not None}
  fields["vocab_size"] = vocab
  if "mlp_hidden_size" not in fields:
    fields["mlp_hidden_size"] = int(hf.get("mlp_ratio", 4) * hf["d_model"])
  if hf.get("torch_dtype") in _NP_DTYPES:
    fields["param_dtype"] = fields["compute_dtype"] = hf["torch_dtype"]
  fields.update(dtype_overrides)
  try:
    return LLaDAConfig(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: {e}") from e


def config_to_hf(cfg: LLaDAConfig, torch_dtype: str = "bfloat16") -> dict[str, Any]:
  """LLaDA-style ``config.json`` contents for ``cfg``."""
  hf = {field_hf: getattr(cfg, field) for field_hf, field in _HF_CONFIG_FIELDS.items()}
  hf.update({
      "architectures": ["LLaDAModelLM"], "model_type": "llada",
      "embedding_size": cfg.vocab_size, "n_kv_heads": cfg.n_heads,
      "mlp_ratio": cfg.mlp_hidden_size / cfg.d_model, "torch_dtype": torch_dtype,
      "rope_full_precision": True, **_UNSUPPORTED_IF_NOT,
  })
  return hf


def read_config(folder: str, **dtype_overrides) -> LLaDAConfig:
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no config.json in the checkpoint folder")
  try:
    with open(path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
  return config_from_hf(hf, source=path, **dtype_overrides)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _weight_map(folder: str) -> dict[str, str]:
  """``{tensor name: shard path}`` from the index json, or from a single safetensors file."""
  index = os.path.join(folder, INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from e
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: weight_map is not an object")
    for name, shard in weight_map.items():
      if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
        raise CheckpointError(f"{index}: {name!r} maps to {shard!r}, not a file name inside the "
                              f"checkpoint folder")
    return {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
  single = os.path.join(folder, SINGLE_FILE)
  if not os.path.isfile(single):
    raise CheckpointError(f"{folder}: neither {INDEX_FILE} nor {SINGLE_FILE} found")
  with _open_shard(single) as f:
    return {name: single for name in f.keys()}


class _open_shard:
  """``safe_open`` that names the file in every error (truncated or corrupt shards)."""

  def __init__(self, path: str):
    self.path = path

  def __enter__(self):
    if not os.path.isfile(self.path):
      raise CheckpointError(f"{self.path}: shard listed in the index does not exist")
    try:
      self._cm = safe_open(self.path, framework="numpy")
      return self._cm.__enter__()
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{self.path}: unreadable safetensors file (truncated or corrupt?): "
                            f"{e}") from e

  def __exit__(self, *exc):
    return self._cm.__exit__(*exc)


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One checkpoint tensor, not yet read: ``read(index)`` returns the slice ``index`` (a tuple of
  slices in NNX layout) of the tensor in NNX layout, reading only that slice from the file.

  Attributes:
    name: the HF tensor name.
    path: the NNX state path.
    shape: the shape in NNX layout (``[in, out]`` for linear kernels).
    read: ``index -> np.ndarray`` in the file's dtype.
  """

  name: str
  path: tuple
  shape: tuple[int, ...]
  read: Callable[[tuple], np.ndarray]


def _non_finite_count(array: np.ndarray) -> int:
  return int(np.size(array) - np.count_nonzero(np.isfinite(array)))


def _slice_reader(view, name: str, shard: str, transpose: bool) -> Callable[[tuple], np.ndarray]:
  """``index -> slice`` of the safetensors slice ``view`` in NNX layout (transposed back)."""
  ndim = len(view.get_shape())

  def read(index: tuple) -> np.ndarray:
    index = tuple(index) + (slice(None),) * (ndim - len(index))
    try:
      part = view[index[::-1] if transpose else index]
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{shard}: cannot read tensor {name!r} (truncated file?): {e}") from e
    bad = _non_finite_count(part)
    if bad:
      raise CheckpointError(f"{shard}: {name!r} holds {bad} non-finite values; refusing to load")
    return part.T if transpose else part

  return read


def iter_hf_tensors(folder: str, cfg: LLaDAConfig) -> Iterator[HFTensor]:
  """Yields every tensor of the checkpoint as an unread :class:`HFTensor`, shard by shard (a
  tensor's ``read`` is valid until the next one is yielded: its file is then closed).

  Checks the complete key set first (missing and unexpected keys), then each tensor's shape against
  the config before any data is read.
  """
  names = hf_name_map(cfg)
  weight_map = _weight_map(folder)
  missing = sorted(set(names) - set(weight_map))
  unexpected = sorted(set(weight_map) - set(names))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
      parts.append(f"unexpected key(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    raise CheckpointError(f"{folder}: checkpoint does not match the config "
                          f"({cfg.n_layers} layers, d_model {cfg.d_model}): " + "; ".join(parts))
  _, abstract = abstract_model(cfg)
  expected_shapes = {path: var.get_value().shape for path, var in nnx.to_flat_state(abstract)}
  by_shard: dict[str, list[str]] = {}
  for name, shard in weight_map.items():
    by_shard.setdefault(shard, []).append(name)
  for shard, shard_names in sorted(by_shard.items()):
    with _open_shard(shard) as f:
      present = set(f.keys())
      for name in sorted(shard_names):
        if name not in present:
          raise CheckpointError(f"{shard}: index lists {name!r} but the file does not contain it")
        path, transpose = names[name]
        view = f.get_slice(name)
        hf_shape = tuple(view.get_shape())
        expected = tuple(expected_shapes[path])
        want = expected[::-1] if transpose else expected
        if hf_shape != want:
          raise CheckpointError(f"{shard}: shape mismatch for {name!r}: expected {want} "
                                f"(from config.json), got {hf_shape}")
        dtype = view.get_dtype()
        if dtype not in _FLOAT_DTYPES:
          raise CheckpointError(f"{shard}: {name!r} is stored as {dtype}; LLaDA weights are one of "
                                f"{list(_FLOAT_DTYPES)} (quantized checkpoints are not supported)")
        yield HFTensor(name, path, expected, _slice_reader(view, name, shard, transpose))


def _check_size_against_files(folder: str, cfg: LLaDAConfig) -> None:
  """Refuses a ``config.json`` whose model the safetensors files could not hold even at one byte
  per parameter, before the model's structure is built (10 million layers would hang); smaller
  disagreements are named tensor by tensor by the shape checks."""
  files = set(_weight_map(folder).values())
  stored = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
  if cfg.num_params() > stored:
    raise CheckpointError(f"{os.path.join(folder, CONFIG_FILE)}: describes {cfg.num_params():,} "
                          f"parameters ({cfg.n_layers} layers, d_model {cfg.d_model}) but the "
                          f"weight files hold {stored:,} bytes")


def load_hf_checkpoint(folder: str, mesh: Mesh | None = None, *, config: LLaDAConfig | None = None,
                       param_dtype: str | None = None, compute_dtype: str | None = None,
                       remat: bool | None = None, rules=None
                       ) -> tuple[LLaDAConfig, nnx.GraphDef, nnx.State]:
  """Loads an HF LLaDA folder into ``(config, graphdef, state)``, straight into the shardings.

  Each process reads from the memory-mapped shards only the distinct slices its own devices hold
  (``jax.make_array_from_callback`` asks for exactly those), so no device and no host ever holds
  more than its shards plus one slice in flight.

  Args:
    folder: directory with ``config.json`` and safetensors weights.
    mesh: if given, every parameter is placed into its sharding from the logical-axis rules;
      otherwise onto the first local device.
    config: optional expected config; it must agree with ``config.json`` on every architecture field.
    param_dtype / compute_dtype: override the dtypes (e.g. "float32" for CPU tests).
    remat: override ``remat`` (a training choice that ``config.json`` does not hold).
  """
  overrides = {k: v for k, v in (("param_dtype", param_dtype), ("compute_dtype", compute_dtype),
                                 ("remat", remat)) if v is not None}
  if config is not None:
    overrides = {"param_dtype": config.param_dtype, "compute_dtype": config.compute_dtype,
                 "remat": config.remat, **overrides}
  cfg = read_config(folder, **overrides)
  if config is not None:
    diffs = [f"{f}: config.json has {getattr(cfg, f)!r}, expected {getattr(config, f)!r}"
             for f in _HF_CONFIG_FIELDS.values() if getattr(cfg, f) != getattr(config, f)]
    if diffs:
      raise CheckpointError(f"{os.path.join(folder, CONFIG_FILE)} disagrees with the requested "
                            "config: " + "; ".join(diffs))
  _check_size_against_files(folder, cfg)
  graphdef, abstract = abstract_model(cfg)
  if mesh is not None:
    kwargs = {} if rules is None else {"rules": rules}
    shardings = dict(nnx.to_flat_state(sharding_lib.state_shardings(abstract, mesh, **kwargs)))
  else:
    shardings = {}
  default = SingleDeviceSharding(jax.local_devices()[0])
  np_dtype = _NP_DTYPES[cfg.param_dtype]
  values = {}
  for tensor in iter_hf_tensors(folder, cfg):
    read = lambda index, tensor=tensor: np.ascontiguousarray(
        tensor.read(index).astype(np_dtype, copy=False))
    values[tensor.path] = jax.make_array_from_callback(
        tensor.shape, shardings.get(tensor.path, default), read, dtype=np_dtype)
  flat = nnx.to_flat_state(abstract)
  for path, var in flat:
    var.set_value(values[path])
  return cfg, graphdef, nnx.from_flat_state(flat)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def export_hf_checkpoint(cfg: LLaDAConfig, state: nnx.State, folder: str, *,
                         dtype: str = "bfloat16", max_shard_bytes: int = 5 * 2**30,
                         on_tensor: Callable[[str], None] | None = None) -> list[str]:
  """Writes ``state`` as an HF LLaDA folder (config.json, safetensors shards, index json).

  Linear kernels are transposed back to torch's ``[out, in]``. In a multi-process run every process
  must call this (sharded tensors are gathered); only process 0 writes. Returns the shard files.
  A non-finite parameter stops the export before any file is written (``CheckpointError``).
  """
  np_dtype = _NP_DTYPES[dtype]
  flat = dict(nnx.to_flat_state(state))
  names = hf_name_map(cfg)
  shards: list[dict[str, np.ndarray]] = [{}]
  sizes = [0]
  for name, (path, transpose) in names.items():
    if path not in flat:
      raise CheckpointError(f"state has no parameter at {'.'.join(map(str, path))} for {name!r}")
    array = sharding_lib.to_host(flat[path].get_value())
    bad = _non_finite_count(array)
    if bad:
      raise CheckpointError(f"{folder}: not written: {name!r} has {bad} non-finite values")
    array = np.ascontiguousarray(array.T if transpose else array).astype(np_dtype)
    if sizes[-1] and sizes[-1] + array.nbytes > max_shard_bytes:
      shards.append({})
      sizes.append(0)
    shards[-1][name] = array
    sizes[-1] += array.nbytes
    if on_tensor is not None:
      on_tensor(name)
  if jax.process_index() != 0:
    return []
  os.makedirs(folder, exist_ok=True)
  files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  umask = os.umask(0)
  os.umask(umask)
  for file, tensors in zip(files, shards):
    save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
    os.chmod(os.path.join(folder, file), 0o666 & ~umask)  # safetensors creates files 0600
    weight_map.update({name: file for name in tensors})
  with open(os.path.join(folder, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(config_to_hf(cfg, torch_dtype=dtype), f, indent=2)
  return [os.path.join(folder, file) for file in files]


def write_export_record(folder: str, record: dict[str, Any]) -> None:
  """``folder/dispo_jax_export.json``: what an exported model needs to be evaluated as it was
  trained (``prompt_format``: ``"tiny"`` or ``"chat"``; the task, data and sampler settings)."""
  with open(os.path.join(folder, EXPORT_RECORD_FILE), "w") as f:
    json.dump(record, f, indent=1, sort_keys=True, default=list)


def read_export_record(folder: str) -> dict[str, Any] | None:
  """The record :func:`write_export_record` left in ``folder`` (None: an HF model of its own);
  :class:`CheckpointError` naming the file when it is unreadable."""
  path = os.path.join(folder, EXPORT_RECORD_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read())
  except (ValueError, RecursionError) as e:
    raise CheckpointError(f"{path}: unreadable ({type(e).__name__})") from None
  if not isinstance(record, dict) or record.get("prompt_format") not in ("tiny", "chat"):
    raise CheckpointError(f"{path}: not an export record (an object with prompt_format "
                          f"'tiny' or 'chat')")
  return record
