"""Exact SPG bounds on short completions: when is the EUBO an upper bound?

  python experiments/spg_bounds.py --cases=2000 --length=3

For random fully context-dependent denoisers (every mask pattern has its own random logits) and a
random completion of ``length`` tokens, enumerates every mask pattern and every unmasking order, and
counts how often each bound falls on the wrong side of the exact log-likelihood under uniform
any-order unmasking. ``exact_quantities`` is also the reference of ``tests/test_spg.py``.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np


def subsets(length: int) -> list[frozenset]:
  """Every non-empty set of masked positions."""
  return [frozenset(s) for r in range(1, length + 1)
          for s in itertools.combinations(range(length), r)]


def mask_weight(k: int, length: int) -> float:
  """``∫ t^(k−1) (1−t)^(L−k) dt``: the mass of one k-subset under t ~ U(0,1), times the 1/t weight."""
  return math.factorial(k - 1) * math.factorial(length - k) / math.factorial(length)


def exact_quantities(cond: dict, length: int, beta: float) -> tuple[float, float, float, float]:
  """``(log p, ELBO, token EUBO, sequence EUBO)`` from ``cond[M][i] = log p(o_i | o_{¬M})``.

  * log p = log E_σ Π_k p(o_σk | o_σ<k): uniform any-order unmasking, one token at a time;
  * ELBO = E_{t,M}[(1/t) Σ_{i∈M} log p(o_i | o_¬M)] (t ~ U(0,1), each position masked w.p. t);
  * token EUBO = (L/β) mean_i log a_i, a_i = E_{t,M}[1(i∈M) p(o_i | o_¬M)^β / t] — what SPG's
    estimator converges to (its per-completion value, times L);
  * sequence EUBO = (L/β) log(Σ_i a_i / L).
  """
  paths = []
  for order in itertools.permutations(range(length)):
    masked, total = set(range(length)), 0.0
    for i in order:
      total += cond[frozenset(masked)][i]
      masked.remove(i)
    paths.append(total)
  log_likelihood = float(np.log(np.mean(np.exp(paths))))
  w = {m: mask_weight(len(m), length) for m in cond}
  elbo = sum(w[m] * sum(cond[m][i] for i in m) for m in cond)
  a = [sum(w[m] * np.exp(beta * cond[m][i]) for m in cond if i in m) for i in range(length)]
  token_eubo = (length / beta) * float(np.mean(np.log(a)))
  sequence_eubo = (length / beta) * float(np.log(np.sum(a) / length))
  return log_likelihood, float(elbo), token_eubo, sequence_eubo


def random_conditionals(rng: np.random.Generator, length: int, vocab: int, scale: float) -> dict:
  """``cond[M][i]`` of a random denoiser (own logits per mask pattern) for a random completion."""
  target = rng.integers(0, vocab, length)
  cond = {}
  for m in subsets(length):
    logits = rng.normal(size=(length, vocab)) * scale
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cond[m] = logp[np.arange(length), target]
  return cond


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--cases", type=int, default=2000)
  parser.add_argument("--length", type=int, default=3)
  parser.add_argument("--vocab", type=int, default=4)
  parser.add_argument("--betas", default="1,1.5,2,3,4")
  parser.add_argument("--scales", default="0.5,2,5")
  args = parser.parse_args()
  betas = [float(b) for b in args.betas.split(",")]
  scales = [float(s) for s in args.scales.split(",")]
  rng = np.random.default_rng(0)
  wrong = {(name, b): 0 for name in ("token", "sequence") for b in betas}
  elbo_wrong, total = 0, 0
  for _ in range(args.cases):
    for scale in scales:
      cond = random_conditionals(rng, args.length, args.vocab, scale)
      total += 1
      for b in betas:
        log_p, elbo, token, sequence = exact_quantities(cond, args.length, b)
        wrong[("token", b)] += token < log_p - 1e-12
        wrong[("sequence", b)] += sequence < log_p - 1e-12
      elbo_wrong += elbo > log_p + 1e-12
  print(f"{total} random cases, L = {args.length}, vocabulary {args.vocab}; ELBO above log p: "
        f"{elbo_wrong}")
  print("| β | token EUBO (SPG's) below log p | sequence EUBO below log p |")
  print("|---|---|---|")
  for b in betas:
    print(f"| {b:g} | {wrong[('token', b)]} ({100 * wrong[('token', b)] / total:.1f} %) | "
          f"{wrong[('sequence', b)]} ({100 * wrong[('sequence', b)] / total:.1f} %) |")


if __name__ == "__main__":
  main()
