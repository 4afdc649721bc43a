"""The paper's gradient-variance measurement (App. E / Fig. 2) on the tiny Sudoku base.

  python experiments/gradient_variance.py --workdir=/tmp/gradvar --repeats=32

For ``--repeats`` independent rollout batches of the same prompts from the same policy (fresh
rollouts, branch draws and prompt masks each time), computes the gradient of

  * the base term (diffu-GRPO, one-step surrogate, terminal advantage) restricted to the *matched
    tokens*: the completion positions that were still masked at the row's branch state, and
  * DiSPO's state term (Z branch fillings of those same positions, branch advantages),

both as plain token means over the same number of tokens (so neither is favoured by its
normaliser), at the behaviour policy (ratio 1, β = 0). Prints, per term, the total variance
``E‖g − μ‖²`` across repeats, the squared norm of the expected gradient ``‖μ‖²`` (both unbiased
estimates) and their ratio (a per-batch noise-to-signal ratio); the paper's claim is that the state term's gradient is the less noisy one
per scored token. Writes ``{workdir}/gradient_variance.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import sudoku as sudoku_config  # noqa: E402
from dispo_jax import train  # noqa: E402
from dispo_jax.model import tokenizer as tok  # noqa: E402
from dispo_jax import pipeline  # noqa: E402
from dispo_jax.rl import learner, losses  # noqa: E402
from dispo_jax.rl.objectives import state_term  # noqa: E402
from dispo_jax.sampling import decode_completions  # noqa: E402


def flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def term_gradients(policy, params, batch, key, s: learner.ObjectiveSettings):
  """(base-term gradient on the matched tokens, step-term gradient), both flat, at ratio 1."""
  trainable, frozen = params
  matched = jnp.any(batch.action_mask, axis=2)[:, 0] & batch.completion_mask  # [N, G]

  def base(t):
    logp = s.base_term.logprobs(policy.bind((t, frozen)), batch, key, s)
    return losses.diffu_grpo_loss(logp, jax.lax.stop_gradient(logp), None, batch.advantages,
                                  matched, beta=0.0)[0]

  def step(t):
    logp = state_term.logprobs(policy.bind((t, frozen)), batch, key, s)
    return losses.state_term_loss(logp, jax.lax.stop_gradient(logp), None,
                                  batch.branch_advantages, batch.action_mask, beta=0.0)[0]
  return flat(jax.grad(base)(trainable)), flat(jax.grad(step)(trainable))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/gradient_variance")
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--repeats", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  c = sudoku_config.get_config(args.config)
  c.method, c.rl.beta = "dispo", 0.0
  run, state = train.setup(c, args.workdir)
  md, ids, policy = run.md, run.ids, run.fns.policy
  rows = pipeline.prompts_for_batch(md.train_rows, 0, c.rollout.prompts_per_batch, c.seed)
  tokens, lengths = tok.encode_prompts(
      md.tokenizer, [tok.render_prompt(md.tokenizer, md.prompt_fn(r)) for r in rows],
      c.rollout.max_prompt_length, ids.pad)
  decode = lambda completions: decode_completions(md.tokenizer, completions, ids.eos)
  reward_fn = pipeline.make_reward_fn(run.task, decode, rows)

  grads_of = jax.jit(lambda p, b, k: term_gradients(policy, p, b, k, run.settings.objective))
  base_grads, state_grads, tokens_scored = [], [], []
  for r in range(args.repeats):
    key = jax.random.fold_in(jax.random.key(args.seed), r)
    batch, _, _ = pipeline.collect(key, policy.graphdef, policy.model_state(state.params), tokens,
                                   lengths, reward_fn, run.fns.settings)
    g_base, g_state = grads_of(state.params, batch, jax.random.fold_in(key, 7))
    base_grads.append(np.asarray(g_base))
    state_grads.append(np.asarray(g_state))
    tokens_scored.append(int(jnp.sum(jnp.any(batch.action_mask, axis=2))))
  result = {"repeats": args.repeats, "config": args.config,
            "matched_tokens_per_batch": float(np.mean(tokens_scored))}
  print(f"{args.repeats} rollout batches of {len(rows)} prompts × {c.rollout.group_size}; "
        f"{result['matched_tokens_per_batch']:.1f} matched tokens per batch")
  print("| term | E‖g − μ‖² | ‖μ‖² | noise / signal |")
  print("|---|---|---|---|")
  for name, grads in (("base (diffu-GRPO, matched tokens)", base_grads),
                      ("step (DiSPO)", state_grads)):
    g = np.stack(grads)
    mean = g.mean(0)
    variance = float(((g - mean) ** 2).sum(1).sum() / (len(g) - 1))  # unbiased E‖g − μ‖²
    signal = float((mean ** 2).sum()) - variance / len(g)  # unbiased ‖μ‖² (E‖ḡ‖² = ‖μ‖² + tr Σ / R)
    result[name] = {"total_variance": variance, "mean_sq_norm": signal,
                    "noise_to_signal": variance / max(signal, 1e-30)}
    print(f"| {name} | {variance:.4g} | {signal:.4g} | {variance / max(signal, 1e-30):.1f} |")
  with open(os.path.join(args.workdir, "gradient_variance.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
