"""End-to-end smoke run of the tiny CPU model: build, save, load, forward, sample, branch, decode.

  python -m dispo_jax.demo [--workdir /tmp/dispo_demo]

Trains a small byte-level BPE tokenizer with LLaDA's special tokens, initialises a tiny LLaDA,
exports it as an HF checkpoint folder, loads it back through the same loader used for LLaDA-8B,
renders a chat prompt, runs the jitted sampler with a branch-state cache and draws DiSPO branches.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dispo_jax.model import checkpoint, llada, tokenizer as tok
from dispo_jax.model.config import get_config
from dispo_jax.sampling import (SamplerSettings, completion_mask, decode_completions, generate,
                                sample_rollout_branches)

_CORPUS = [
    "Respond in the following format: <reasoning> ... </reasoning> <answer> ... </answer>",
    "Solve the following 4x4 Sudoku puzzle. Empty cells are 0: 1030020000401002",
    "Using the numbers 3, 5, 7, create an equation that equals 22.",
] * 50


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default=os.path.join("/tmp", "dispo_jax_demo"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  tok_dir = os.path.join(args.workdir, "tokenizer")
  hf_dir = os.path.join(args.workdir, "hf_checkpoint")

  tokenizer = tok.build_bpe_tokenizer(_CORPUS, vocab_size=400, folder=tok_dir)
  tokenizer = tok.load_tokenizer(tok_dir)
  ids = tok.special_ids(tokenizer)
  cfg = get_config("tiny", vocab_size=len(tokenizer), bos_token_id=ids.bos, eos_token_id=ids.eos,
                   pad_token_id=ids.pad, mask_token_id=ids.mask)
  print(f"[1/5] tokenizer: {len(tokenizer)} tokens, mask id {ids.mask} -> {tok_dir}")

  _, state = llada.init_model(cfg, seed=args.seed)
  files = checkpoint.export_hf_checkpoint(cfg, state, hf_dir, dtype="float32")
  print(f"[2/5] tiny LLaDA: {llada.count_params(state):,} parameters exported to {len(files)} "
        f"safetensors shard(s) in {hf_dir}")

  cfg, graphdef, state = checkpoint.load_hf_checkpoint(hf_dir)
  prompts = [tok.render_chat("Solve the following 4x4 Sudoku puzzle: 1030020000401002"),
             tok.render_chat("Using 3, 5, 7 make 22.")]
  tokens, lengths = tok.encode_prompts(tokenizer, prompts, max_length=48)
  logits = jax.jit(llada.forward, static_argnums=0)(graphdef, state, jnp.asarray(tokens),
                                                    jnp.asarray(tok.padding_mask(lengths, 48)))
  print(f"[3/5] reloaded and ran the forward: logits {tuple(logits.shape)} {logits.dtype}, "
        f"finite={bool(jnp.isfinite(logits).all())}")

  settings = SamplerSettings(gen_length=32, block_length=16, num_timesteps=16, temperature=0.9,
                             mask_id=cfg.mask_token_id)
  branch_timesteps = jnp.asarray([[12], [14]], jnp.int32)
  rollout = generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths),
                     jax.random.key(args.seed), settings, branch_timesteps=branch_timesteps)
  texts = decode_completions(tokenizer, rollout.completion, cfg.eos_token_id)
  lengths_to_eos = np.asarray(completion_mask(rollout.completion, cfg.eos_token_id)).sum(-1)
  print(f"[4/5] sampled {settings.gen_length} tokens in {settings.num_timesteps} timesteps "
        f"(untrained model, so the text is noise); tokens up to EOS: {lengths_to_eos.tolist()}")
  for text in texts:
    print("      ", repr(text[:80]))

  filled, action = sample_rollout_branches(jax.random.key(1), rollout, num_branches=2,
                                           temperature=settings.temperature, mask_id=cfg.mask_token_id)
  print(f"[5/5] DiSPO branches: {tuple(filled.shape)} fillings of "
        f"{np.asarray(action).sum(-1).ravel().tolist()} masked positions per state")
  print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  main()
