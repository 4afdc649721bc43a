"""The tiny CPU setting's base: a project-built tokenizer and an SFT'd LLaDA, cached by their settings.

The compact prompt/completion format and the generated rows belong to each task
(:class:`dispo_jax.tasks.base.TinySetting`); here the base model is trained with LLaDA's SFT
objective (:mod:`dispo_jax.pretrain`) on them, once per setting. The cache folder is named by a
hash of everything that produced the base (task, data, model shape, SFT settings, prompt and
completion lengths), so a changed setting trains a new base instead of reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from dispo_jax.run.config import ConfigError
from dispo_jax.model import checkpoint, llada, tokenizer as tok
from dispo_jax.model.config import get_config
from dispo_jax.pretrain import train_sft
from dispo_jax.tasks import DataSettings, Task, get_task

FORMAT_VERSION = 2  # bump when the compact format or the SFT recipe changes


@dataclasses.dataclass(frozen=True)
class BaseSettings:
  """Config section ``base``: the tiny setting's SFT base.

  Attributes:
    steps: SFT steps (>= 1 to train one; 0 only with an HF checkpoint).
    batch_size: SFT batch size.
    learning_rate: SFT learning rate.
    cache_dir: where trained bases are kept ("" = ``$DISPO_JAX_CACHE`` or ``~/.cache/dispo_jax``).
  """

  steps: int = 0
  batch_size: int = 64
  learning_rate: float = 3e-3
  cache_dir: str = ""

  def __post_init__(self):
    if self.steps < 0 or self.batch_size < 1 or not self.learning_rate > 0:
      raise ValueError(f"steps >= 0, batch_size >= 1 and learning_rate > 0 needed; got {self}")


def cache_root(base: BaseSettings) -> str:
  default = os.environ.get("DISPO_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                               "dispo_jax")
  return os.path.join(base.cache_dir or default, "tiny_base")


def base_key(c) -> dict:
  """Everything that determines the tiny base of config ``c`` (its cache key, as a dict)."""
  # where RL and test prompts come from never changes the SFT rows
  rl_prompts_only = ("train_file", "eval_file", "few_shot", "rl_grid_fraction",
                     "rl_on_test_grids", "num_test_grids")
  data = {k: v for k, v in c.data.to_dict().items() if k not in rl_prompts_only}
  base = {k: v for k, v in c.base.to_dict().items() if k != "cache_dir"}
  return {"format": FORMAT_VERSION, "task": c.task, "data": data, "base": base,
          "preset": c.model.preset, "overrides": c.model.overrides.to_dict(),
          "max_prompt_length": c.rollout.max_prompt_length,
          "gen_length": c.sampler.gen_length}


def base_folder(c) -> str:
  key = json.dumps(base_key(c), sort_keys=True, default=list)
  digest = hashlib.sha256(key.encode()).hexdigest()[:12]
  return os.path.join(cache_root(BaseSettings(**c.base.to_dict())), f"{c.task}-{digest}")


def build_tokenizer(folder: str, task: Task, rows: list[dict]):
  corpus = [tok.render_chat(task.tiny.prompt(r)) + task.tiny.completion(r) for r in rows[:2000]]
  tok.build_bpe_tokenizer(corpus, vocab_size=300, folder=folder, individual_digits=True)
  return tok.load_tokenizer(folder)


def encode_pairs(tokenizer, task: Task, rows: list[dict], prompt_length: int, gen_length: int):
  """Left-padded compact prompts and EOS-padded compact completions as int32 arrays."""
  ids = tok.special_ids(tokenizer)
  prompts, lengths = tok.encode_prompts(
      tokenizer, [tok.render_chat(task.tiny.prompt(r)) for r in rows], prompt_length)
  completions = np.full((len(rows), gen_length), ids.eos, np.int32)
  for i, r in enumerate(rows):
    ids_ = tokenizer(task.tiny.completion(r), add_special_tokens=False)["input_ids"]
    ids_ = ids_[:gen_length - 1]
    completions[i, :len(ids_)] = ids_
  return prompts, lengths, completions


def prepare_base(c, progress: bool = True):
  """``(tokenizer, cfg, graphdef, state)`` of the tiny setting of config ``c``: loaded from the
  cache when a base with the same settings exists, else SFT'd (with a progress bar) and cached."""
  folder = base_folder(c)
  if os.path.exists(os.path.join(folder, "model", "config.json")):
    tokenizer = tok.load_tokenizer(os.path.join(folder, "tokenizer"))
    return (tokenizer, *checkpoint.load_hf_checkpoint(os.path.join(folder, "model")))
  task = get_task(c.task)
  data = DataSettings(**c.data.to_dict())
  rows = task.tiny.base_rows(data)
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(folder))
  try:
    tokenizer = build_tokenizer(os.path.join(staging, "tokenizer"), task, rows)
    cfg, graphdef, state = _sft_base(c, task, tokenizer, rows, progress)
    checkpoint.export_hf_checkpoint(cfg, state, os.path.join(staging, "model"), dtype="float32")
    with open(os.path.join(staging, "key.json"), "w") as f:
      json.dump(base_key(c), f, indent=1, sort_keys=True, default=list)
    try:
      os.rename(staging, folder)  # atomic: a concurrent builder of the same base loses the race
    except OSError:
      shutil.rmtree(staging, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return tokenizer, cfg, graphdef, state


def _sft_base(c, task: Task, tokenizer, rows: list[dict], progress: bool):
  ids = tok.special_ids(tokenizer)
  cfg = get_config(c.model.preset, vocab_size=len(tokenizer), bos_token_id=ids.bos,
                   eos_token_id=ids.eos, pad_token_id=ids.pad, mask_token_id=ids.mask,
                   **c.model.overrides.to_dict())
  graphdef, state = llada.init_model(cfg, seed=c.data.seed)
  prompts, lengths, completions = encode_pairs(tokenizer, task, rows,
                                               c.rollout.max_prompt_length, c.sampler.gen_length)
  start = time.perf_counter()
  bar = tqdm(total=c.base.steps, desc=f"base SFT ({c.task}, cached after)", disable=not progress)

  def report(i, loss):
    bar.update(1)
    if i % 10 == 0:
      bar.set_postfix(loss=f"{loss:.4f}")
  try:
    state = train_sft(graphdef, state, prompts, lengths, completions, steps=c.base.steps,
                      batch_size=c.base.batch_size, learning_rate=c.base.learning_rate,
                      mask_id=cfg.mask_token_id, seed=c.data.seed, callback=report)
  except FloatingPointError as e:
    raise ConfigError(f"config.base.learning_rate={c.base.learning_rate!r}: the tiny base's SFT "
                      f"diverged ({e}); lower it") from None
  bar.close()
  logging.info("base SFT: %d steps in %.1fs", c.base.steps, time.perf_counter() - start)
  return cfg, graphdef, state
