"""A trained model as an HF folder: LoRA folded in, safetensors, tokenizer, and the record of how it
was trained (``dispo_jax_export.json``, which ``evaluate`` reads). An object-store folder is
written locally first, then copied."""

from __future__ import annotations

import tempfile
from typing import Any

import jax
from etils import epath

from dispo_jax.model import checkpoint as hf_io, llada
from dispo_jax.model.config import LLaDAConfig
from dispo_jax.run.storage import copy_folder_into, is_object_store


def export_model(cfg: LLaDAConfig, graphdef, model_state, tokenizer, record: dict[str, Any],
                 folder: epath.Path) -> None:
  """Writes ``folder``. Every process calls it (sharded weights are gathered); process 0 writes.

  Args:
    cfg: the model's config (its ``param_dtype`` is the files' dtype).
    graphdef, model_state: the trained model (``Policy.model_state``: LoRA adapters as separate
      parameters, folded here).
    tokenizer: saved beside the weights.
    record: :func:`dispo_jax.model.checkpoint.write_export_record`'s record.
  """
  merged = llada.merge_model(graphdef, model_state)
  with tempfile.TemporaryDirectory() as local:
    target = local if is_object_store(folder) else str(folder)
    hf_io.export_hf_checkpoint(cfg, llada.fold_lora(merged), target, dtype=cfg.param_dtype)
    if jax.process_index() != 0:
      return
    tokenizer.save_pretrained(target)
    hf_io.write_export_record(target, record)
    if target == local:
      copy_folder_into(local, folder)
