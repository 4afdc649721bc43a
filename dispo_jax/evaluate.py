"""Evaluation with the d1 protocol: greedy decoding, timesteps = gen_length / 2, block 32.

  python -m dispo_jax.evaluate --config=configs/eval.py --workdir=/tmp/eval \\
      --config.checkpoint=/path/to/LLaDA-8B-Instruct --config.tasks=sudoku,countdown

Writes ``{workdir}/{task}_{gen_length}.jsonl`` (one generation per line, appended as batches finish)
and ``{workdir}/metrics.json``; rerunning resumes after the last complete line. Beside each
generations file, ``.fingerprint.json`` records what produced it (the checkpoint's files, the
tokenizer, the protocol settings, the rows): a rerun with anything different stops instead of
reporting another model's results. Prints a table per task and generation length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from tqdm import tqdm

from dispo_jax.run import config as config_lib
from dispo_jax.model import checkpoint, sharding, tokenizer as tok
from dispo_jax.model.sharding import row_placer, to_host
from dispo_jax.sampling import SamplerSettings, decode_completions, generate
from dispo_jax.tasks import DataSettings, Task, data as data_lib, get_task, metric, sudoku
from dispo_jax.tasks.base import Score
from dispo_jax.run.storage import LineFile, is_object_store, local_copy
from dispo_jax.run.workdir import WorkdirError, WorkdirLock


def generate_texts(graphdef, state, tokenizer, prompts: Sequence[str], settings: SamplerSettings,
                   max_prompt_length: int, eos_id: int, key: jax.Array, place=jnp.asarray
                   ) -> list[str]:
  """Completions (text up to EOS) for rendered chat prompts, as one batch.

  ``place`` puts host rows on devices (``model.sharding.row_placer``: rows sharded over the
  data axes, as training batches, which a multi-host run needs); the completions are gathered back
  to every process."""
  tokens, lengths = tok.encode_prompts(tokenizer, prompts, max_prompt_length)
  rollout = generate(graphdef, state, place(tokens), place(lengths), key, settings)
  return decode_completions(tokenizer, to_host(rollout.completion), eos_id)


class GenerationsFileError(ValueError):
  """A generations file (or its fingerprint) this program did not write as it is; names it."""


def _read_done(path: str, num_rows: int) -> list[dict]:
  """The records of a generations file; a torn last line (interrupted write) is dropped.

  Any other line that is not a record ``{"index": its line number, "correct", "total", ...}``, or
  more records than ``num_rows``, raises :class:`GenerationsFileError` naming ``file:line``.
  """
  file = epath.Path(path)
  if not file.exists():
    return []
  data = file.read_bytes()
  lines = data.splitlines(keepends=True)
  done, good_bytes = [], 0
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
      if number == len(lines) and not line.endswith(b"\n"):
        break  # torn by an interrupted write: generated again
      raise GenerationsFileError(f"{path}:{number}: not a JSON line; delete the file to "
                                 f"re-evaluate") from None
    if not (isinstance(record, dict) and record.get("index") == number - 1
            and all(isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
                    for k in ("correct", "total"))):
      raise GenerationsFileError(f"{path}:{number}: not a generations record (index "
                                 f"{number - 1} with numeric correct and total); delete the file "
                                 f"to re-evaluate")
    done.append(record)
    good_bytes += len(line)
  if len(done) > num_rows:
    raise GenerationsFileError(f"{path}: {len(done)} records for {num_rows} rows; delete the "
                               f"file to re-evaluate")
  if good_bytes != len(data):
    file.write_bytes(data[:good_bytes])
  return done


class FingerprintMismatch(ValueError):
  """Generations in an output file came from another checkpoint, tokenizer or protocol."""


def folder_fingerprint(folder: str) -> dict:
  """``{file: [size, mtime]}`` of the weight and config files of a checkpoint folder (local or
  ``gs://``)."""
  remote = is_object_store(folder)
  root = epath.Path(folder if remote else os.path.abspath(folder))
  out = {"path": str(root)}
  for item in sorted(root.iterdir(), key=lambda p: p.name):
    if item.name.endswith((".safetensors", ".json")):
      if remote:
        st = item.stat()
        out[item.name] = [st.length, st.mtime]
      else:  # nanosecond mtimes: two exports within a second still differ
        st = os.stat(item)
        out[item.name] = [st.st_size, st.st_mtime_ns]
  return out


def check_fingerprint(out_path: str, fingerprint: dict) -> None:
  """Records ``fingerprint`` beside ``out_path`` or checks it against the recorded one."""
  path = out_path + ".fingerprint.json"
  current = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
  if epath.Path(path).exists():
    try:
      recorded = json.loads(epath.Path(path).read_bytes())
    except (ValueError, RecursionError) as e:
      raise GenerationsFileError(f"{path}: unreadable ({type(e).__name__}); delete it and "
                                 f"{out_path} to re-evaluate") from None
    if not isinstance(recorded, dict):
      raise GenerationsFileError(f"{path}: not a fingerprint (a JSON "
                                 f"{type(recorded).__name__}); delete it and {out_path} to "
                                 f"re-evaluate")
    if isinstance(recorded.get("sampler"), dict):
      recorded["sampler"] = config_lib.current_fields("sampler", recorded["sampler"], path)
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if changed:
      raise FingerprintMismatch(
          f"{out_path} holds generations of another evaluation (different {', '.join(changed)}); "
          f"use another --workdir, or delete {out_path} and {path} to re-evaluate")
  elif epath.Path(out_path).exists() and epath.Path(out_path).stat().length:
    raise FingerprintMismatch(f"{out_path} has generations but no {path}: their source is "
                              f"unknown; delete it to re-evaluate")
  else:
    epath.Path(path).write_text(json.dumps(current, indent=1, sort_keys=True))


def evaluate_task(task: Task, rows: list[dict], graphdef, state, tokenizer, *, gen_length: int,
                  block_length: int, batch_size: int, max_prompt_length: int, mask_id: int,
                  eos_id: int, out_path: str | None = None, mask_padding: bool = True,
                  seed: int = 0, progress: bool = True, prompt_fn=None,
                  num_timesteps: int | None = None, model_fingerprint: dict | None = None,
                  place=jnp.asarray) -> dict[str, Any]:
  """Greedy d1-protocol evaluation of ``rows``; appends to ``out_path`` and resumes from it.

  ``prompt_fn`` (default ``task.eval_prompt``) gives the user content; ``num_timesteps`` defaults to d1's
  ``gen_length // 2``. With ``out_path``, ``model_fingerprint`` (checkpoint and tokenizer) and the
  protocol settings are checked against the file's recorded fingerprint before resuming.
  """
  prompt_fn = prompt_fn or task.eval_prompt
  settings = SamplerSettings(gen_length=gen_length, block_length=min(block_length, gen_length),
                             num_timesteps=num_timesteps or gen_length // 2, temperature=0.0, mask_id=mask_id,
                             mask_padding=mask_padding)
  if out_path:
    rows_digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode())
    check_fingerprint(out_path, {
        "model": model_fingerprint, "task": task.name, "sampler": dataclasses.asdict(settings),
        "max_prompt_length": max_prompt_length, "seed": seed, "rows": rows_digest.hexdigest(),
        "prompt": prompt_fn(rows[0]) if rows else "", "rewards": sorted(task.reward_terms)})
  done = _read_done(out_path, len(rows)) if out_path else []
  scores = [Score(d["correct"], d["total"]) for d in done]
  start = len(done)
  out = LineFile(out_path) if out_path else None
  for lo in tqdm(range(start, len(rows), batch_size), disable=not progress,
                 desc=f"{task.name}@{gen_length}"):
    batch = rows[lo:lo + batch_size]
    prompts = [tok.render_prompt(tokenizer, prompt_fn(r)) for r in batch]
    pad = batch_size - len(batch)  # keep one compiled shape
    texts = generate_texts(graphdef, state, tokenizer, prompts + prompts[:1] * pad, settings,
                           max_prompt_length, eos_id, jax.random.key(seed + lo),
                           place)[:len(batch)]
    lines = []
    for offset, (row, text) in enumerate(zip(batch, texts)):
      s = task.score(text, row)
      scores.append(s)
      lines.append(json.dumps({"index": lo + offset, "row": row, "generation": text,
                               "correct": s.correct, "total": s.total}) + "\n")
    if out is not None:
      out.append(lines)
  return {"accuracy": metric(scores), "n": len(scores), "resumed_from": start}


def format_table(results: dict[str, dict[int, dict]]) -> str:
  lengths = sorted({g for per in results.values() for g in per})
  header = f"{'task':12s}" + "".join(f"{g:>10d}" for g in lengths) + f"{'avg':>10s}"
  lines = [header, "-" * len(header)]
  for task, per in results.items():
    accs = [per[g]["accuracy"] * 100 for g in lengths if g in per]
    cells = "".join(f"{per[g]['accuracy'] * 100:10.1f}" if g in per else f"{'-':>10s}"
                    for g in lengths)
    lines.append(f"{task:12s}{cells}{np.mean(accs):10.1f}")
  return "\n".join(lines)


def eval_mesh(config) -> tuple[jax.sharding.Mesh, Any]:
  """``(mesh, row placer)`` from ``config.mesh``: parameters follow the logical-axis rules; rows
  are sharded over the batch axes when ``config.batch_size`` divides them, else replicated."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  rows = sharding.logical_sharding(mesh, "batch", "length")
  row_devices = int(np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(rows.spec))]))
  if config.batch_size % row_devices:
    logging.warning("config.batch_size=%d is not a multiple of the %d devices rows are split "
                    "over: every device decodes the whole batch", config.batch_size, row_devices)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None))
  return mesh, row_placer(rows)


def run(config, workdir: str) -> dict:
  """Evaluates ``config.checkpoint`` on every task and generation length into ``workdir``
  (resumable; the folder is held with the training runs' lock while it is written)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _run_locked(config, workdir)
  finally:
    lock.release()


@dataclasses.dataclass(frozen=True)
class Job:
  """One evaluation: a task's rows, how they are asked, and the sampler shape."""

  task: Task
  rows: list[dict]
  prompt_fn: Any
  gen_length: int
  block_length: int
  num_timesteps: int | None  # None: d1's gen_length // 2
  max_prompt_length: int


def tiny_jobs(record: dict, limit: int) -> list[Job]:
  """A tiny run's export evaluated as the run evaluated it: its compact prompts, held-out rows
  and sampler shape (``record``: the export's ``dispo_jax_export.json``)."""
  task = get_task(record["task"], d1_compat=record["d1_compat"],
                  reward=record.get("reward", "default"))  # absent in records before rewards
  rows = task.tiny.rows(DataSettings(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in record["data"].items()}))[1]
  rows = rows[:record["eval_rows"]][: limit if limit > 0 else None]
  sampler = config_lib.current_fields("sampler", record["sampler"], "dispo_jax_export.json")
  return [Job(task, rows, task.tiny.prompt, sampler["gen_length"], sampler["block_length"],
              sampler["num_timesteps"], record["max_prompt_length"])]


def d1_jobs(config) -> list[Job]:
  """d1's protocol: each task's test subset, its chat prompts, every generation length."""
  jobs = []
  for name in [t for t in str(config.tasks).split(",") if t]:
    task = get_task(name, d1_compat=config.d1_compat)
    path = (config.get("data_files") or {}).get(name) or None
    rows = data_lib.load_rows(name, path)
    size = task.eval_size if config.eval_size < 0 else config.eval_size
    subset = data_lib.d1_eval_subset(rows, None if size is None else min(size, len(rows)),
                                     config.seed)
    rows = [rows[i] for i in subset][: config.limit if config.limit > 0 else None]
    few_shot = config.get("sudoku_few_shot", 0) if name == "sudoku" else 0
    prompt_fn = sudoku.few_shot_prompt(few_shot) if few_shot else task.eval_prompt
    jobs += [Job(task, rows, prompt_fn, g, config.block_length, None, config.max_prompt_length)
             for g in config.gen_lengths]
  return jobs


def evaluation_jobs(config, record: dict | None) -> list[Job]:
  """``config.prompt_format``: ``auto`` (a tiny run's export as :func:`tiny_jobs`, any other
  model as :func:`d1_jobs`), ``d1`` or ``tiny``."""
  fmt = config.get("prompt_format", "auto")
  if fmt not in ("auto", "d1", "tiny"):
    raise config_lib.ConfigError(f"config.prompt_format={fmt!r} is invalid: must be auto, d1 or "
                                 f"tiny")
  tiny = fmt == "tiny" or (fmt == "auto" and record is not None
                           and record["prompt_format"] == "tiny")
  if not tiny:
    return d1_jobs(config)
  if record is None or record["prompt_format"] != "tiny":
    raise config_lib.ConfigError(f"config.prompt_format='tiny' needs a tiny run's export "
                                 f"({config.checkpoint} has no tiny {checkpoint.EXPORT_RECORD_FILE})")
  return tiny_jobs(record, config.limit)


def _run_locked(config, workdir: str) -> dict:
  mesh, place = eval_mesh(config)
  with tempfile.TemporaryDirectory() as scratch:  # gs:// models are read from a local copy
    checkpoint_dir = local_copy(config.checkpoint, scratch)
    cfg, graphdef, state = checkpoint.load_hf_checkpoint(
        checkpoint_dir, mesh, param_dtype=config.get("param_dtype") or None,
        compute_dtype=config.get("compute_dtype") or None)
    tokenizer = tok.load_tokenizer(local_copy(config.tokenizer, scratch)
                                   if config.get("tokenizer") else checkpoint_dir)
    record = checkpoint.read_export_record(checkpoint_dir)
  model_fingerprint = {"checkpoint": folder_fingerprint(config.checkpoint),
                       "tokenizer": folder_fingerprint(config.get("tokenizer")
                                                       or config.checkpoint),
                       "param_dtype": cfg.param_dtype, "compute_dtype": cfg.compute_dtype,
                       "d1_compat": config.d1_compat}
  results: dict[str, dict[int, dict]] = {}
  for job in evaluation_jobs(config, record):
    start = time.perf_counter()
    name, g = job.task.name, job.gen_length
    with jax.set_mesh(mesh):
      results.setdefault(name, {})[g] = evaluate_task(
          job.task, job.rows, graphdef, state, tokenizer, gen_length=g,
          block_length=job.block_length, num_timesteps=job.num_timesteps, batch_size=config.batch_size,
          max_prompt_length=job.max_prompt_length, mask_id=cfg.mask_token_id,
          eos_id=cfg.eos_token_id, out_path=str(epath.Path(workdir) / f"{name}_{g}.jsonl"),
          mask_padding=config.mask_padding, prompt_fn=job.prompt_fn,
          model_fingerprint=model_fingerprint, place=place)
    logging.info("%s@%d: %.4f (%.1fs)", name, g, results[name][g]["accuracy"],
                 time.perf_counter() - start)
  metrics_path = epath.Path(workdir) / "metrics.json"
  if jax.process_index() == 0:
    metrics_path.write_text(json.dumps(
        {t: {str(g): r for g, r in per.items()} for t, per in results.items()}, indent=2))
  print(format_table(results))
  print(f"\ngenerations and metrics: {workdir} ({metrics_path.name}, <task>_<gen_length>.jsonl)")
  return results


FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.config.checkpoint:
    sys.exit("error: config.checkpoint is empty: give --config.checkpoint=<an HF LLaDA folder or "
             "a training run's export>")
  try:
    run(FLAGS.config, FLAGS.workdir)
  except (FingerprintMismatch, GenerationsFileError, data_lib.DataError, WorkdirError,
          checkpoint.CheckpointError, tok.TokenizerError, config_lib.ConfigError) as e:
    sys.exit(f"error: {e}")


def cli():
  """``dispo-evaluate`` / ``python -m dispo_jax.evaluate``."""
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:  # the dispo-* console script: absl's --help prints this module's
    main_module.__doc__ = __doc__
  config_lib.define_config_flag(
      "config", "eval", "Evaluation config: the recipe 'eval' (d1's protocol; eval:tiny a smoke "
      "subset) or a config file (configs/eval.py); override keys with --config.<key>=value.")
  flags.DEFINE_string("workdir", None, "Output folder (generations, metrics; resumable).",
                      module_name=sys.argv[0])
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=config_lib.parse_flags)


if __name__ == "__main__":
  cli()
