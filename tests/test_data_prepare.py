"""``python -m dispo_jax.data``: hub-format rows -> the files the trainer reads, checked on the way;
and the optional Weights & Biases writer beside TensorBoard."""

import json
import subprocess
import sys
import types

import pytest

from dispo_jax.run import metrics
from dispo_jax.data import prepare
from dispo_jax.tasks import data as data_lib
from tests.helpers import COUNTDOWN_ROWS, MATH_ROWS

GSM8K_ROWS = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
              for a, b in [(1, 2), (30, 12), (7, 8)]]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.mark.parametrize("task, rows", [("gsm8k", GSM8K_ROWS), ("math500", MATH_ROWS),
                                        ("countdown", COUNTDOWN_ROWS)])
def test_a_local_dataset_becomes_the_tasks_file(task, rows, tmp_path):
  source = _write_jsonl(tmp_path / "hub.jsonl", [{**r, "unused": 1} for r in rows])
  out = str(tmp_path / "out" / f"{task}.jsonl")
  assert prepare.prepare(task, "train", out, source=source) == len(rows)
  written = [json.loads(line) for line in open(out)]
  assert all("unused" not in r for r in written)
  assert data_lib.load_rows(task, out) == data_lib.load_rows(task, source)


def test_parquet_and_limit(tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa
  source = str(tmp_path / "train.parquet")
  pq.write_table(pa.Table.from_pylist(GSM8K_ROWS), source)
  out = str(tmp_path / "gsm8k.jsonl")
  assert prepare.prepare("gsm8k", "train", out, source=source, limit=2) == 2
  assert [r["question"] for r in data_lib.load_rows("gsm8k", out)] == [
      r["question"] for r in GSM8K_ROWS[:2]]


def test_hub_datasets_are_read_through_datasets(tmp_path, monkeypatch):
  calls = []
  fake = types.ModuleType("datasets")
  fake.load_dataset = lambda path, name, split: calls.append((path, name, split)) or GSM8K_ROWS
  monkeypatch.setitem(sys.modules, "datasets", fake)
  out = str(tmp_path / "gsm8k_test.jsonl")
  assert prepare.prepare("gsm8k", "test", out) == 3
  assert calls == [("openai/gsm8k", "main", "test")]


@pytest.mark.parametrize("rows, match", [
    ([GSM8K_ROWS[0], {"question": "no answer"}], r"hub\.jsonl:2: no answer field"),
    ([GSM8K_ROWS[0], {"question": "q", "answer": "no final line"}],
     r"answer has no '#### <number>' line"),
])
def test_a_bad_row_is_named_and_nothing_is_written(rows, match, tmp_path):
  source = _write_jsonl(tmp_path / "hub.jsonl", rows)
  out = tmp_path / "gsm8k.jsonl"
  with pytest.raises(data_lib.DataError, match=match):
    prepare.prepare("gsm8k", "train", str(out), source=source)
  assert list(tmp_path.iterdir()) == [tmp_path / "hub.jsonl"]


def test_the_command_line(tmp_path):
  source = _write_jsonl(tmp_path / "hub.jsonl", COUNTDOWN_ROWS)
  out = tmp_path / "cd.jsonl"
  ok = subprocess.run([sys.executable, "-m", "dispo_jax.data", "--task=countdown",
                       f"--source={source}", f"--out={out}"], capture_output=True, text=True,
                      cwd=tmp_path)
  assert ok.returncode == 0 and f"--config.data.train_file={out}" in ok.stdout, ok.stderr
  bad = subprocess.run([sys.executable, "-m", "dispo_jax.data", "--task=math500", "--split=dev",
                        f"--out={out}"], capture_output=True, text=True, cwd=tmp_path)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "error: --split='dev': math500 has no default source for it (known: ['train', 'test']); "
      "give --source"]


def test_weights_and_biases_gets_every_logged_row(tmp_path, monkeypatch):
  logged, inits = [], []

  class FakeRun:
    def log(self, row, step):
      logged.append((step, row))

    def finish(self):
      logged.append("finished")

  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: inits.append(kw) or FakeRun()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  writer = metrics.MetricWriter(str(tmp_path), 0, wandb_project="dispo", record={"seed": 3})
  writer.write(0, {"loss": 1.5, "bad": float("nan")})
  writer.close()
  assert logged == [(0, {"loss": 1.5}), "finished"]
  assert inits[0]["project"] == "dispo" and inits[0]["config"] == {"seed": 3}
  assert inits[0]["resume"] == "allow"
  again = metrics.MetricWriter(str(tmp_path), 1, wandb_project="dispo")
  assert inits[1]["id"] == inits[0]["id"]  # a resumed run continues its W&B run
  again.close()
