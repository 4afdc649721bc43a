"""Sampler benchmark: loop efficiency, speed-up over an eager host loop, branch-cache bytes.

  python -m benchmarks.sampler [--batch 4] [--prompt 32] [--gen 64] [--block 32] [--steps 32]

Prints, in one run:
  (a) loop efficiency = jitted generate time / (steps × one jitted forward), on `small` (goal ≤ 1.15);
  (b) speed-up of the jitted loop over an eager Python loop that calls a jitted forward once per
      step and selects tokens on the host in NumPy (how the PyTorch reference runs), tiny and small;
  (c) bytes of the branch cache per row (one state) against caching every step;
  (d) ms per generated token of Fast-dLLM's accelerations against the plain loop, on `small` at
      prompt 64, gen 256, block 32, 128 steps: the approximate dual KV cache (``kv_cache="dual"``),
      confidence-threshold parallel decoding (``threshold=0.9``) and both, each as
      ``speed-up = N.NNx`` (random weights are unconfident, so the threshold rarely fires here);
  (e) with ``--sudoku``: held-out greedy cell accuracy of the tiny Sudoku base (the main command's,
      trained once and cached) decoded with each option: the accuracy cost, and the mean steps used.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import time_fn
from dispo_jax.model import llada
from dispo_jax.model.config import get_config
from dispo_jax.sampling import SamplerSettings, decode_completions, generate


def eager_generate(fwd, graphdef, state, prompt, s: SamplerSettings, rng: np.random.Generator):
  """Host-side reference loop: one jitted forward per step, NumPy Gumbel/top-k selection."""
  b, p = prompt.shape
  x = np.concatenate([prompt, np.full((b, s.gen_length), s.mask_id, np.int32)], axis=1)
  schedule = s.transfer_schedule()
  for t in range(s.num_timesteps):
    blk, j = divmod(t, s.timesteps_per_block)
    lo, hi = p + blk * s.block_length, p + (blk + 1) * s.block_length
    logits = np.array(fwd(graphdef, state, jnp.asarray(x)), np.float32)[:, lo:hi]
    logits[..., s.mask_id] = -np.inf
    noisy = logits / max(s.temperature, 1e-6) + rng.gumbel(size=logits.shape)
    x0 = noisy.argmax(-1)
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    conf = np.take_along_axis(probs, x0[..., None], -1)[..., 0]
    conf = np.where(x[:, lo:hi] == s.mask_id, conf, -np.inf)
    for row in range(b):
      chosen = np.argsort(-conf[row])[: schedule[j]]
      x[row, lo + chosen] = x0[row, chosen]
  return x


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--gen", type=int, default=64)
  parser.add_argument("--block", type=int, default=32)
  parser.add_argument("--timesteps", "--steps", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sudoku", action="store_true", help="(e): accuracy on tiny Sudoku")
  args = parser.parse_args()
  print(f"backend={jax.default_backend()} batch={args.batch} prompt={args.prompt} gen={args.gen} "
        f"block={args.block} timesteps={args.timesteps}")
  for name in ("tiny", "small"):
    cfg = get_config(name)
    graphdef, state = llada.init_model(cfg)
    s = SamplerSettings(gen_length=args.gen, block_length=args.block, num_timesteps=args.timesteps,
                        temperature=0.9, mask_id=cfg.mask_token_id, mask_padding=False)
    prompt = np.full((args.batch, args.prompt), 7, np.int32)
    lengths = jnp.full((args.batch,), args.prompt, jnp.int32)
    canvas = jnp.zeros((args.batch, args.prompt + args.gen), jnp.int32)
    fwd = jax.jit(llada.forward, static_argnums=0)
    t_forward = time_fn(lambda: fwd(graphdef, state, canvas), repeats=args.repeats * 3)
    key = jax.random.key(0)
    t_jit = time_fn(lambda: generate(graphdef, state, jnp.asarray(prompt), lengths, key, s).tokens,
                    repeats=args.repeats)
    rng = np.random.default_rng(0)
    t_eager = time_fn(lambda: eager_generate(fwd, graphdef, state, prompt, s, rng),
                      repeats=args.repeats)
    print(f"{name:6s} forward {t_forward * 1e3:7.2f} ms | jitted generate {t_jit * 1e3:8.1f} ms | "
          f"eager loop {t_eager * 1e3:8.1f} ms")
    print(f"{name:6s} (a) loop efficiency = {t_jit / (args.timesteps * t_forward):.3f} "
          f"(goal <= 1.15)   (b) speed-up over eager host loop = {t_eager / t_jit:.2f}x")
  # (c) cache bytes, per row, for LLaDA-8B at the paper's rollout settings.
  big = get_config("llada_8b")
  g, steps, v = 256, 128, big.vocab_size
  per_state = g * v * 2  # bf16 logits
  per_state_topk = g * 64 * (2 + 4)
  print(f"(c) LLaDA-8B branch cache per row: one state {per_state / 2**20:.1f} MiB "
        f"(top-64: {per_state_topk / 2**10:.1f} KiB) vs every step {steps * per_state / 2**30:.2f} "
        f"GiB -> {steps}x smaller with |T_sub| = 1")
  kv_cache_speed(args.repeats)
  if args.sudoku:
    kv_cache_accuracy()


OPTIONS = {"plain": {}, "dual cache": {"kv_cache": "dual"}, "threshold 0.9": {"threshold": 0.9},
           "both": {"kv_cache": "dual", "threshold": 0.9}}


def kv_cache_speed(repeats: int, batch: int = 4, prompt: int = 64, gen: int = 256) -> None:
  """(d) ms per generated token of each option, in one run."""
  cfg = get_config("small")
  graphdef, state = llada.init_model(cfg)
  tokens = jnp.full((batch, prompt), 7, jnp.int32)
  lengths = jnp.full((batch,), prompt, jnp.int32)
  ms = {}
  for name, option in OPTIONS.items():
    s = SamplerSettings(gen_length=gen, block_length=32, num_timesteps=128, temperature=0.9,
                        mask_id=cfg.mask_token_id, **option)
    seconds = time_fn(lambda: generate(graphdef, state, tokens, lengths, jax.random.key(0),
                                       s).tokens, repeats=repeats)
    ms[name] = seconds * 1e3 / (batch * gen)
    print(f"(d) small, prompt {prompt}, gen {gen}, block 32, 128 steps, batch {batch}: {name:13s} "
          f"{ms[name]:.3f} ms/token, speed-up = {ms['plain'] / ms[name]:.2f}x")


def kv_cache_accuracy() -> None:
  """(e) the accuracy cost of each option on the main command's tiny Sudoku base."""
  from configs import sudoku as sudoku_config
  from dispo_jax import tiny_base as tiny, train
  from dispo_jax.model import tokenizer as tok
  from dispo_jax.tasks import DataSettings, get_task, metric
  c = sudoku_config.get_config("tiny")
  tokenizer, cfg, graphdef, state = tiny.prepare_base(train.base_spec(c))
  task = get_task("sudoku")
  rows = task.tiny.rows(DataSettings(**c.data.to_dict()))[1][:c.eval_rows]
  texts = [tok.render_prompt(tokenizer, task.tiny.prompt(r)) for r in rows]
  prompts, lengths = tok.encode_prompts(tokenizer, texts, c.rollout.max_prompt_length)
  eos = tok.special_ids(tokenizer).eos
  for steps in (6, 24):
    for name, option in OPTIONS.items():
      s = SamplerSettings(gen_length=24, block_length=8, num_timesteps=steps, temperature=0.0,
                          mask_id=cfg.mask_token_id, **option)
      r = generate(graphdef, state, jnp.asarray(prompts), jnp.asarray(lengths),
                   jax.random.key(0), s)
      decoded = decode_completions(tokenizer, np.asarray(r.completion), eos)
      accuracy = metric([task.score(t, row) for t, row in zip(decoded, rows)])
      used = float(np.mean(np.asarray(r.commit_timestep).max(-1) + 1))
      print(f"(e) tiny Sudoku base, {len(rows)} held-out puzzles, gen 24 in 3 blocks of 8, "
            f"{steps} steps, {name:13s}: cell accuracy {accuracy:.3f}, steps used {used:.1f}")


if __name__ == "__main__":
  main()
