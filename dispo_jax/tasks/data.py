"""Dataset files: readers for the public formats with errors that name file and line.

Formats (as published; tested on small local files in the same layout):
  * Sudoku CSV (d1): header ``Puzzle,Solution``; 16-digit strings.
  * Countdown JSONL (d1 test set): ``{"input": "a,b,c", "output": "t"}``; or the HF
    Jiayi-Pan/Countdown-Tasks-3to4 rows ``{"nums": [...], "target": t}`` (JSONL or parquet).
  * GSM8K (openai/gsm8k): ``{"question", "answer"}`` rows, answer ending in ``#### n``.
  * MATH-500 (HuggingFaceH4/MATH-500: ``problem, solution, answer, ...``; ankner/math-500:
    ``problem, solution``).
Every reader returns a list of plain dicts in the task's field names.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
from typing import Any, Callable, Iterator

from dispo_jax.tasks import sudoku


class DataError(ValueError):
  """A malformed data file; the message names the file and line (or row)."""


def bundled_path(name: str) -> str:
  """Path of a file shipped in ``dispo_jax/data`` (d1's test sets)."""
  return str(importlib.resources.files("dispo_jax") / "data" / name)


def _records(path: str) -> Iterator[tuple[int, dict]]:
  """``(line number, row)`` from a JSONL or parquet file."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file does not exist")
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise DataError(f"{path}: reading parquet needs pyarrow: pip install 'dispo_jax[data]'") from None
    try:
      table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
      raise DataError(f"{path}: unreadable parquet file: {e}") from e
    for i, row in enumerate(table.to_pylist(), start=1):
      yield i, row
    return
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      line = _decoded(raw, path, lineno)
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
      except RecursionError:
        raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
      except ValueError as e:  # e.g. an integer over Python's digit limit
        raise DataError(f"{path}:{lineno}: unreadable JSON value ({e})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
      yield lineno, row


def _decoded(raw: bytes, path: str, lineno: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at column "
                    f"{e.start + 1})") from None


def _nonempty(rows: list[dict], path: str) -> list[dict]:
  if not rows:
    raise DataError(f"{path}: no rows (the file is empty or holds only blank lines)")
  return rows


def _strict_int(value, name: str, where: str) -> int:
  """An integer field: ints, or strings of digits; never floats (6.7 -> 6) or booleans."""
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise DataError(f"{where}: {name}={value!r} is not an integer")
  try:
    return int(value)
  except ValueError:
    raise DataError(f"{where}: {name}={value!r} is not an integer") from None


def _require(row: dict, keys, where: str) -> None:
  missing = [k for k in keys if k not in row]
  if missing:
    raise DataError(f"{where}: missing field(s) {missing} (has {sorted(row)})")


def load_sudoku_csv(path: str) -> list[dict]:
  """d1's Sudoku CSV -> ``[{"puzzle", "solution"}]``, validating every row."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file does not exist")
  with open(path, "rb") as f:
    lines = [_decoded(raw, path, lineno) for lineno, raw in enumerate(f, start=1)]
  reader = csv.reader(lines)
  try:
    return _nonempty(_sudoku_records(path, reader), path)
  except csv.Error as e:  # e.g. a field over csv's 128 KiB limit
    raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _sudoku_records(path: str, reader) -> list[dict]:
  rows = []
  header = next(reader, None)
  if header is None or [h.strip() for h in header[:2]] != ["Puzzle", "Solution"]:
    raise DataError(f"{path}:1: expected header 'Puzzle,Solution', got {header!r}")
  for lineno, record in enumerate(reader, start=2):
    if not record:
      continue
    if len(record) < 2:
      raise DataError(f"{path}:{lineno}: expected 2 columns, got {len(record)}")
    puzzle, solution = record[0].strip(), record[1].strip()
    if len(puzzle) != 16 or set(puzzle) - set("01234"):
      raise DataError(f"{path}:{lineno}: puzzle {puzzle[:40]!r} is not 16 digits 0-4")
    if not sudoku.is_valid_grid(solution):
      raise DataError(f"{path}:{lineno}: solution {solution[:40]!r} is not a valid 4x4 grid")
    if any(p != "0" and p != s for p, s in zip(puzzle, solution)):
      raise DataError(f"{path}:{lineno}: puzzle {puzzle!r} contradicts solution {solution!r}")
    rows.append({"puzzle": puzzle, "solution": solution})
  return rows


def load_countdown(path: str) -> list[dict]:
  """d1's JSONL or the HF Countdown rows -> ``[{"numbers", "target"}]``."""
  rows = []
  for lineno, row in _records(path):
    where = f"{path}:{lineno}"
    if "input" in row:
      _require(row, ["input", "output"], where)
      if not isinstance(row["input"], str):
        raise DataError(f"{where}: input={row['input']!r} is not a comma-separated string")
      numbers = [_strict_int(x.strip(), "input", where) for x in row["input"].split(",")]
      target = _strict_int(row["output"], "output", where)
    else:
      _require(row, ["nums", "target"], where)
      if not isinstance(row["nums"], list):
        raise DataError(f"{where}: nums={row['nums']!r} is not a list")
      numbers = [_strict_int(x, "nums", where) for x in row["nums"]]
      target = _strict_int(row["target"], "target", where)
    if not numbers:
      raise DataError(f"{where}: no numbers")
    rows.append({"numbers": numbers, "target": target})
  return _nonempty(rows, path)


def load_gsm8k(path: str) -> list[dict]:
  rows = []
  for lineno, row in _records(path):
    _require(row, ["question", "answer"], f"{path}:{lineno}")
    if "####" not in str(row["answer"]):
      raise DataError(f"{path}:{lineno}: answer has no '#### <number>' line")
    rows.append({"question": str(row["question"]), "answer": str(row["answer"])})
  return _nonempty(rows, path)


def load_math(path: str) -> list[dict]:
  rows = []
  for lineno, row in _records(path):
    _require(row, ["problem"], f"{path}:{lineno}")
    if not row.get("answer") and not row.get("solution"):
      raise DataError(f"{path}:{lineno}: needs an 'answer' or a 'solution' field")
    rows.append({k: row[k] for k in ("problem", "solution", "answer", "subject", "level",
                                     "unique_id") if k in row and row[k] is not None})
  return _nonempty(rows, path)


LOADERS: dict[str, Callable[[str], list[dict]]] = {
    "sudoku": load_sudoku_csv, "countdown": load_countdown, "gsm8k": load_gsm8k,
    "math500": load_math,
}
BUNDLED_TEST_FILES = {"sudoku": "4x4_test_sudoku.csv", "countdown": "countdown_cd3_test.jsonl"}


def load_rows(task: str, path: str | None = None) -> list[dict]:
  """Rows of ``task`` from ``path`` (default: the bundled d1 test set, where there is one)."""
  if task not in LOADERS:
    raise KeyError(f"no loader for task {task!r}; known: {sorted(LOADERS)}")
  if path is None:
    if task not in BUNDLED_TEST_FILES:
      raise DataError(f"task {task!r} ships no data: give a local file in the HF format")
    path = bundled_path(BUNDLED_TEST_FILES[task])
  return LOADERS[task](path)


def d1_eval_subset(rows: list[Any], size: int | None, seed: int = 42) -> list[int]:
  """Indices of d1's evaluation subset: ``np.random.seed(seed); choice(n, size, replace=False)``
  with NumPy's legacy generator (the whole set in order when ``size`` is None or ≥ n... as d1 when
  its subsample is -1)."""
  import numpy as np
  if size is None:
    return list(range(len(rows)))
  if size > len(rows):
    raise DataError(f"evaluation size {size} exceeds the {len(rows)} rows available")
  return np.random.RandomState(seed).choice(len(rows), size, replace=False).tolist()
