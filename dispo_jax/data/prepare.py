"""Training and test files for the real tasks, in the formats ``dispo_jax.tasks.data`` reads.

  python -m dispo_jax.data --task=gsm8k --split=train --out=data/gsm8k_train.jsonl
  python -m dispo_jax.data --task=math500 --split=test --out=data/math500_test.jsonl
  python -m dispo_jax.data --task=countdown --split=train --out=data/countdown_train.jsonl
  python -m dispo_jax.data --task=gsm8k --split=train --source=my_gsm8k.parquet --out=...

``--source`` defaults to the HF hub dataset d1 trains or evaluates on (:data:`SOURCES`; read with
``datasets``, the ``data`` extra); a local ``.jsonl`` / ``.json`` / ``.parquet`` file in the same
schema is read without it. Every row is checked as it is converted (a bad one is named by source
and row number) and the written file is read back by the task's loader before the command
succeeds. Sudoku needs nothing: the tiny setting generates puzzles and d1's test set is bundled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Iterable

from dispo_jax.tasks import data as data_lib


@dataclasses.dataclass(frozen=True)
class Source:
  """A hub dataset: ``datasets.load_dataset(path, name, split=split)``."""

  path: str
  name: str | None
  split: str


# The datasets d1 trains on (diffu-grpo/data_utils.py) and evaluates on (eval/).
SOURCES = {
    ("gsm8k", "train"): Source("openai/gsm8k", "main", "train"),
    ("gsm8k", "test"): Source("openai/gsm8k", "main", "test"),
    ("math500", "train"): Source("ankner/math-500", None, "train"),
    ("math500", "test"): Source("HuggingFaceH4/MATH-500", None, "test"),
    ("countdown", "train"): Source("Jiayi-Pan/Countdown-Tasks-3to4", None, "train"),
}

# The fields each task's loader reads (the rest of a row is dropped), and those it needs.
FIELDS = {
    "gsm8k": (("question", "answer"), ("question", "answer")),
    "math500": (("problem", "solution", "answer", "subject", "level", "unique_id"), ("problem",)),
    "countdown": (("nums", "target"), ("nums", "target")),
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_local(path: str) -> list[dict]:
  """The rows of a local JSONL / JSON-array / parquet file."""
  if not os.path.isfile(path):
    raise data_lib.DataError(f"{path}: file does not exist")
  if path.endswith(".json"):
    try:
      rows = json.loads(open(path, "rb").read())
    except ValueError as e:
      raise data_lib.DataError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(rows, list):
      raise data_lib.DataError(f"{path}: expected a JSON array of rows")
    return rows
  return [row for _, row in data_lib._records(path)]  # noqa: SLF001 - the loaders' own reader


def read_hub(source: Source) -> Iterable[dict]:
  try:
    import datasets
  except ImportError:
    raise data_lib.DataError(f"reading {source.path} from the HF hub needs datasets: pip install "
                             f"'dispo_jax[data]' (or give --source=<a local .jsonl/.parquet file>)"
                             ) from None
  return datasets.load_dataset(source.path, source.name, split=source.split)


def convert(task: str, rows: Iterable[Any], where: str) -> list[dict]:
  """Rows with the task's fields only; a row that is not an object or lacks a needed field is
  named as ``<where>:<row number>``."""
  keep, needed = FIELDS[task]
  out = []
  for number, row in enumerate(rows, 1):
    if not isinstance(row, dict):
      raise data_lib.DataError(f"{where}:{number}: expected a row object, got "
                               f"{type(row).__name__}")
    missing = [k for k in needed if k not in row or row[k] is None]
    if missing:
      raise data_lib.DataError(f"{where}:{number}: no {', '.join(missing)} field (has "
                               f"{', '.join(sorted(map(str, row))) or 'none'})")
    out.append({k: row[k] for k in keep if k in row and row[k] is not None})
  return out


def prepare(task: str, split: str, out: str, source: str = "", limit: int = 0) -> int:
  """Writes ``out`` (JSONL) for ``task``'s ``split``; returns the number of rows."""
  if task not in FIELDS:
    raise data_lib.DataError(f"--task={task!r}: one of {sorted(FIELDS)} (sudoku needs no files)")
  if source.endswith(LOCAL_SUFFIXES):
    rows, where = read_local(source), source
  else:
    if not source and (task, split) not in SOURCES:
      raise data_lib.DataError(f"--split={split!r}: {task} has no default source for it (known: "
                               f"{[s for t, s in SOURCES if t == task]}); give --source")
    hub = SOURCES[(task, split)] if not source else Source(source, None, split)
    rows, where = read_hub(hub), hub.path
  rows = convert(task, rows, where)[: limit if limit > 0 else None]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  try:
    data_lib.load_rows(task, tmp)  # the file the trainer will read, read as it will read it
  except data_lib.DataError:
    os.remove(tmp)
    raise
  os.replace(tmp, out)
  return len(rows)


def cli(argv: list[str] | None = None) -> None:
  """``dispo-data`` / ``python -m dispo_jax.data``."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m dispo_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=sorted(FIELDS))
  parser.add_argument("--split", default="train")
  parser.add_argument("--out", required=True, help="the JSONL file to write")
  parser.add_argument("--source", default="", help="a hub dataset or a local .jsonl/.json/.parquet "
                      "file (default: d1's dataset for the task and split)")
  parser.add_argument("--limit", type=int, default=0, help="> 0: only the first rows")
  args = parser.parse_args(argv)
  try:
    n = prepare(args.task, args.split, args.out, args.source, args.limit)
  except data_lib.DataError as e:
    sys.exit(f"error: {e}")
  flag = "train_file" if args.split == "train" else "eval_file"
  print(f"{args.out}: {n} {args.task} rows (train with --config.data.{flag}={args.out})")
