"""The tiny CPU setting's base: a project-built tokenizer and a LLaDA SFT'd with LLaDA's own
objective, cached by their settings.

The compact prompt/completion format and the generated rows belong to each task
(:class:`dispo_jax.tasks.base.TinySetting`); here the base model is trained on them once per
setting. The cache folder is named by a hash of everything that produced the base (task, data,
model shape, SFT settings, prompt and completion lengths), so a changed setting trains a new base
instead of reusing a stale one.

The SFT objective (:func:`sft_loss`): for each row ``t ~ U(ε, 1)``; every completion token is masked
with probability ``t`` (the prompt never is); the loss is the cross-entropy on masked tokens
weighted by ``1/t``, summed over the completion and divided by its length (completions are padded
with EOS, which the model learns to emit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from dispo_jax.run.config import ConfigError, section_without_added_defaults
from dispo_jax.model import checkpoint, llada, tokenizer as tok
from dispo_jax.model.config import get_config
from dispo_jax.tasks import DataSettings, Task, get_task

Array = jax.Array
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


@dataclasses.dataclass(frozen=True)
class BaseSpec:
  """Everything that determines a tiny base: its cache key.

  Attributes:
    task: the task name (its tiny setting makes the SFT rows).
    data: the data settings (where RL and test prompts come from does not enter the key).
    base: the SFT settings (``cache_dir`` does not enter the key).
    preset, overrides: the model preset and its field overrides.
    max_prompt_length, gen_length: the SFT rows' prompt and completion lengths (tokens).
  """

  task: str
  data: DataSettings
  base: BaseSettings
  preset: str
  overrides: dict
  max_prompt_length: int
  gen_length: int


# Data settings that choose RL and test prompts only: they never change the SFT rows.
_RL_PROMPTS_ONLY = ("train_file", "eval_file", "few_shot", "rl_grid_fraction", "rl_on_test_grids",
                    "num_test_grids")


def base_key(spec: BaseSpec) -> dict:
  """The cache key of ``spec``'s base, as a dict (written to the base folder's ``key.json``); data
  keys added at their defaults stay out of it (a new key does not retrain cached bases)."""
  data = section_without_added_defaults("data", {
      k: v for k, v in dataclasses.asdict(spec.data).items() if k not in _RL_PROMPTS_ONLY})
  base = {k: v for k, v in dataclasses.asdict(spec.base).items() if k != "cache_dir"}
  key = {"format": FORMAT_VERSION, "task": spec.task, "data": data, "base": base,
         "preset": spec.preset, "overrides": dict(spec.overrides),
         "max_prompt_length": spec.max_prompt_length, "gen_length": spec.gen_length}
  revision = get_task(spec.task).tiny.rows_revision
  return {**key, "rows_revision": revision} if revision else key


def base_folder(spec: BaseSpec) -> str:
  key = json.dumps(base_key(spec), sort_keys=True, default=list)
  digest = hashlib.sha256(key.encode()).hexdigest()[:12]
  return os.path.join(cache_root(spec.base), f"{spec.task}-{digest}")


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


def prepare_base(spec: BaseSpec, progress: bool = True):
  """``(tokenizer, cfg, graphdef, state)`` of the tiny base ``spec``: loaded from the cache when a
  base with the same settings exists, else SFT'd (with a progress bar) and cached."""
  folder = base_folder(spec)
  if os.path.exists(os.path.join(folder, "model", "config.json")):
    tokenizer = tok.load_tokenizer(os.path.join(folder, "tokenizer"))
    return (tokenizer, *checkpoint.load_hf_checkpoint(os.path.join(folder, "model")))
  task = get_task(spec.task)
  rows = task.tiny.base_rows(spec.data)
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(folder))
  try:
    tokenizer = build_tokenizer(os.path.join(staging, "tokenizer"), task, rows)
    cfg, graphdef, state = _sft_base(spec, task, tokenizer, rows, progress)
    checkpoint.export_hf_checkpoint(cfg, state, os.path.join(staging, "model"), dtype="float32")
    with open(os.path.join(staging, "key.json"), "w") as f:
      json.dump(base_key(spec), f, indent=1, sort_keys=True, default=list)
    try:
      os.rename(staging, folder)  # atomic: a concurrent builder of the same base loses the race
    except OSError:
      shutil.rmtree(staging, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return tokenizer, cfg, graphdef, state


def _sft_base(spec: BaseSpec, task: Task, tokenizer, rows: list[dict], progress: bool):
  ids = tok.special_ids(tokenizer)
  cfg = get_config(spec.preset, vocab_size=len(tokenizer), bos_token_id=ids.bos,
                   eos_token_id=ids.eos, pad_token_id=ids.pad, mask_token_id=ids.mask,
                   **spec.overrides)
  graphdef, state = llada.init_model(cfg, seed=spec.data.seed)
  prompts, lengths, completions = encode_pairs(tokenizer, task, rows, spec.max_prompt_length,
                                               spec.gen_length)
  sft = spec.base
  start = time.perf_counter()
  bar = tqdm(total=sft.steps, desc=f"base SFT ({spec.task}, cached after)", disable=not progress)

  def report(i, loss):
    bar.update(1)
    if i % 10 == 0:
      bar.set_postfix(loss=f"{loss:.4f}")
  try:
    state = train_sft(graphdef, state, prompts, lengths, completions, steps=sft.steps,
                      batch_size=sft.batch_size, learning_rate=sft.learning_rate,
                      mask_id=cfg.mask_token_id, seed=spec.data.seed, callback=report)
  except FloatingPointError as e:
    raise ConfigError(f"config.base.learning_rate={sft.learning_rate!r}: the tiny base's SFT "
                      f"diverged ({e}); lower it") from None
  bar.close()
  logging.info("base SFT: %d steps in %.1fs", sft.steps, time.perf_counter() - start)
  return cfg, graphdef, state


# ----------------------------------------------------------------------------------------------
# LLaDA's SFT objective
# ----------------------------------------------------------------------------------------------


def sft_loss(graphdef, state, prompt: Array, prompt_key_mask: Array | None, completion: Array,
             key: Array, mask_id: int, eps: float = 1e-3) -> Array:
  """LLaDA's SFT loss on ``prompt [B, P] ‖ completion [B, G]`` (completion padded with EOS)."""
  b, g = completion.shape
  t_key, m_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (b, 1), minval=eps, maxval=1.0)
  masked = jax.random.uniform(m_key, (b, g)) < t
  canvas = jnp.concatenate([prompt, jnp.where(masked, mask_id, completion)], axis=1)
  key_mask = None
  if prompt_key_mask is not None:
    key_mask = jnp.concatenate([prompt_key_mask, jnp.ones((b, g), bool)], axis=1)
  logits = llada.forward(graphdef, state, canvas, key_mask)[:, prompt.shape[1]:]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, completion[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * masked / t) / (b * g)


def train_sft(graphdef, state, prompts: np.ndarray, prompt_lengths: np.ndarray,
              completions: np.ndarray, *, steps: int, batch_size: int, learning_rate: float,
              mask_id: int, seed: int = 0, mask_padding: bool = True,
              callback: Callable[[int, float], None] | None = None):
  """Adam SFT for ``steps`` minibatches drawn with replacement; returns the new state.

  Raises ``FloatingPointError`` at the first non-finite loss (as the RL update refuses non-finite
  steps), so a diverged base is never returned or cached."""
  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(optax.warmup_cosine_decay_schedule(
                        0.0, learning_rate, max(1, steps // 20), steps, learning_rate * 0.1),
                        weight_decay=0.01))
  opt_state = opt.init(state)
  p = prompts.shape[1]

  @jax.jit
  def step(state, opt_state, prompt, lengths, completion, key):
    key_mask = (jnp.arange(p)[None] >= (p - lengths)[:, None]) if mask_padding else None
    loss, grads = jax.value_and_grad(sft_loss, argnums=1)(graphdef, state, prompt, key_mask,
                                                          completion, key, mask_id)
    updates, opt_state = opt.update(grads, opt_state, state)
    return optax.apply_updates(state, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  for i in range(steps):
    idx = rng.integers(0, len(prompts), batch_size)
    state, opt_state, loss = step(state, opt_state, jnp.asarray(prompts[idx]),
                                  jnp.asarray(prompt_lengths[idx]), jnp.asarray(completions[idx]),
                                  jax.random.fold_in(key, i))
    loss = float(loss)
    if not math.isfinite(loss):  # nothing diverged is returned (the caller saves nothing)
      raise FloatingPointError(f"SFT step {i}: the loss is {loss}; the weights diverged")
    if callback is not None:
      callback(i, loss)
  return state
