"""Shared test helpers: the tests' shrunk tiny run config, run-folder readers, and tiny HF-format
LLaDA folders written from torch/numpy weights."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
from safetensors.numpy import save_file

from dispo_jax.model.checkpoint import config_to_hf, hf_name_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags() -> dict:
  """The shrunk tiny config as overrides of ``sudoku:tiny`` (:func:`small_config` adds a
  checkpoint every 2 updates; the command-line runs keep the config's cadence)."""
  return {"method": "dispo",  # the tests exercise DiSPO's whole path (branches and the state term)
          "model.overrides.d_model": 32, "model.overrides.n_layers": 1,
          "model.overrides.n_heads": 2, "model.overrides.mlp_hidden_size": 64,
          "base.steps": 150, "base.learning_rate": 0.01, "rollout.prompts_per_batch": 2,
          "rollout.group_size": 4, "rl.num_iterations": 2, "data.num_train": 200,
          "data.num_test": 16, "eval_rows": 8, "eval_every": 0, "num_steps": 4,
          "export_hf": False,
          "mesh.data": 1}  # the same single device in-process (8 fake devices) and in subprocesses


def small_config(**changes):
  """The tiny Sudoku config shrunk further for tests (the base SFT takes seconds)."""
  from dispo_jax import recipes
  c = recipes.task_config("sudoku", "tiny")
  for key, value in {**tiny_flags(), "checkpoint_every": 2, **changes}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def fresh_workdir(tmp_path, name: str) -> str:
  """A new empty work folder ``tmp_path/name``."""
  path = tmp_path / name
  path.mkdir()
  return str(path)


def read_metrics(workdir) -> list[dict]:
  """Every row of a run's ``metrics.jsonl``."""
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def trainable_leaves(workdir):
  """``(step, leaves)``: the latest checkpoint's trainable arrays on this process's first device
  (whatever mesh and process count saved them)."""
  import jax
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  path = os.path.join(workdir, "checkpoints", str(step), "trainable")
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), tree)
  return step, jax.tree.leaves(checkpointer.restore(path, target))


def free_port() -> int:
  """A TCP port free on loopback now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


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

      def get_dtype(self):
        return self.view.get_dtype()

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


# ----------------------------------------------------------------------------------------------
# The recipe path: a small LLaDA HF folder and data files in each task's published format
# ----------------------------------------------------------------------------------------------

GSM8K_ROWS = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
               "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
              for a, b in [(3, 4), (10, 5), (7, 8), (2, 9), (6, 6), (12, 1)]]
MATH_ROWS = [{"problem": f"What is ${a} \\times {b}$?",
              "solution": f"${a} \\times {b} = \\boxed{{{a * b}}}$.", "answer": str(a * b),
              "subject": "Prealgebra", "level": 1, "unique_id": f"test/prealgebra/{i}.json"}
             for i, (a, b) in enumerate([(3, 4), (5, 6), (7, 2), (8, 3), (9, 9), (4, 4)])]
COUNTDOWN_ROWS = [{"nums": nums, "target": target} for nums, target in
                  [([3, 5, 7], 22), ([2, 8, 4], 14), ([6, 1, 9], 15), ([10, 2, 3], 17),
                   ([4, 4, 5], 21), ([7, 3, 2], 23)]]
_GRID = "1234341221434321"  # a valid 4x4 solution; digit permutations of it are too
_SOLUTIONS = ["".join(perm[int(d) - 1] for d in _GRID) for perm in ("1234", "2413", "3142", "4321")]
SUDOKU_CSV = "Puzzle,Solution\n" + "".join(  # d1's layout: 16 digits, 0 for a blank
    "".join("0" if (i + k) % 3 else d for i, d in enumerate(sol)) + "," + sol + "\n"
    for k, sol in enumerate(_SOLUTIONS))


def write_task_files(folder: str) -> dict[str, tuple[str, str]]:
  """Small train and eval files of every task in its published layout (GSM8K ``{"question",
  "answer"}``, MATH-500 ``{"problem", "solution", "answer", ...}``, Countdown ``{"nums",
  "target"}``, d1's Sudoku CSV). Returns ``{task: (train file, eval file)}``."""
  os.makedirs(folder, exist_ok=True)
  out = {}
  for task, rows in (("gsm8k", GSM8K_ROWS), ("math500", MATH_ROWS), ("countdown", COUNTDOWN_ROWS)):
    path = os.path.join(folder, f"{task}.jsonl")
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    out[task] = (path, path)
  path = os.path.join(folder, "sudoku.csv")
  with open(path, "w") as f:
    f.write(SUDOKU_CSV)
  out["sudoku"] = (path, path)
  return out


def write_llada_folder(folder: str, seed: int = 0, d_model: int = 32, n_layers: int = 2,
                       sft_steps: int = 400) -> str:
  """A small LLaDA as a user's HF folder: bf16 safetensors, LLaDA's ``config.json`` and a
  byte-level BPE tokenizer with LLaDA's special tokens and chat template.

  The weights are SFT'd for ``sft_steps`` on Sudoku prompts (left-truncated to 64 tokens) answered
  ``<answer>\n{digits}\n</answer>`` in 32 tokens, so sampled completions earn d1's rewards often
  enough for groups to differ (random weights never write an ``<answer>`` block). The special ids
  are not LLaDA-8B's (the vocabulary is small), so code that uses LLaDA's constants instead of the
  model's own ids fails here."""
  from dispo_jax.model import checkpoint, llada, tokenizer as tok
  from dispo_jax.model.config import get_config
  from dispo_jax.tiny_base import train_sft
  from dispo_jax.tasks import sudoku
  corpus = ([r["question"] + r["answer"] for r in GSM8K_ROWS] + [r["problem"] + r["solution"]
            for r in MATH_ROWS] + [f"Using {r['nums']} make {r['target']} <answer>(3+5)*2</answer>"
                                   for r in COUNTDOWN_ROWS] + [SUDOKU_CSV] * 3)
  os.makedirs(folder, exist_ok=True)
  tokenizer = tok.build_bpe_tokenizer(corpus, vocab_size=320, folder=folder)
  ids = tok.special_ids(tokenizer)
  cfg = get_config("tiny", vocab_size=len(tokenizer), d_model=d_model, n_layers=n_layers,
                   n_heads=2, mlp_hidden_size=2 * d_model, bos_token_id=ids.bos,
                   eos_token_id=ids.eos, pad_token_id=ids.pad, mask_token_id=ids.mask)
  graphdef, state = llada.init_model(cfg, seed=seed)
  rows = [{"puzzle": line.split(",")[0], "solution": line.split(",")[1]}
          for line in SUDOKU_CSV.splitlines()[1:]]
  prompts, lengths = tok.encode_prompts(
      tokenizer, [tok.render_prompt(tokenizer, sudoku.train_prompt(r)) for r in rows], 64)
  completions = np.full((len(rows), 32), ids.eos, np.int32)
  for i, r in enumerate(rows):
    answer = tokenizer(f"<answer>\n{r['solution']}\n</answer>", add_special_tokens=False)
    completions[i, :len(answer["input_ids"][:31])] = answer["input_ids"][:31]
  state = train_sft(graphdef, state, prompts, lengths, completions, steps=sft_steps, batch_size=8,
                    learning_rate=3e-3, mask_id=cfg.mask_token_id, seed=seed)
  checkpoint.export_hf_checkpoint(cfg, state, folder, dtype="bfloat16", max_shard_bytes=40_000)
  return folder


def cached_llada_folder() -> str:
  """:func:`write_llada_folder` built once per test session (``$DISPO_JAX_CACHE``, shared by the
  xdist workers; written atomically, the loser of a race discards its copy)."""
  import shutil
  import tempfile
  root = os.environ.get("DISPO_JAX_CACHE") or tempfile.gettempdir()
  folder = os.path.join(root, "recipe_llada")
  if not os.path.exists(os.path.join(folder, "config.json")):
    staging = tempfile.mkdtemp(prefix=".recipe_llada-", dir=root)
    write_llada_folder(staging)
    try:
      os.rename(staging, folder)
    except OSError:
      shutil.rmtree(staging, ignore_errors=True)
  return folder
