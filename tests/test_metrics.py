"""run/metrics.py: metrics.jsonl is never written through a link, reaches an object store at most
once a minute and whole at a flush, skips what it cannot read, and keeps another run's file."""

import json
import os

from dispo_jax.run import metrics as metrics_lib


def test_a_symlinked_metrics_file_is_replaced_never_written_through(tmp_path, caplog):
  outside = tmp_path / "elsewhere.jsonl"
  outside.write_text('{"step": 0, "theirs": 1}\n')
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(outside, workdir / "metrics.jsonl")
  writer = metrics_lib.MetricWriter(str(workdir), resume_step=0)
  writer.write(0, {"loss": 1.0})
  writer.close()
  assert "is a symbolic link" in caplog.text
  assert outside.read_text() == '{"step": 0, "theirs": 1}\n'
  assert not os.path.islink(workdir / "metrics.jsonl")
  assert [json.loads(l) for l in open(workdir / "metrics.jsonl")] == [{"step": 0, "loss": 1.0}]


def test_object_store_metrics_are_uploaded_at_most_once_a_minute_and_whole_at_a_flush(
    tmp_path, monkeypatch):
  """An object-store ``metrics.jsonl`` is rewritten whole (no appends there): once every
  ``UPLOAD_EVERY_S``, not per row, and completely at the flush before a checkpoint and at close."""
  from dispo_jax.run import storage
  for module in (storage, metrics_lib):  # this folder behaves as a gs:// one
    monkeypatch.setattr(module, "is_object_store", lambda path: True)
  now = [1000.0]
  monkeypatch.setattr(storage.time, "monotonic", lambda: now[0])
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=0)
  steps_uploaded = lambda: [r["step"] for r in metrics_lib.read_rows(str(tmp_path / "metrics.jsonl"))]
  writer.write(0, {"loss": 1.0})
  assert steps_uploaded() == [0]  # the first row goes out at once
  for step in (1, 2):
    now[0] += 20
    writer.write(step, {"loss": 1.0})
  assert steps_uploaded() == [0]
  now[0] += metrics_lib.UPLOAD_EVERY_S
  writer.write(3, {"loss": 1.0})
  assert steps_uploaded() == [0, 1, 2, 3]
  writer.write(4, {"loss": 1.0})
  writer.flush()
  assert steps_uploaded() == [0, 1, 2, 3, 4]
  writer.write(5, {"loss": 1.0})
  writer.close()
  assert steps_uploaded() == [0, 1, 2, 3, 4, 5]


def test_a_corrupt_metrics_line_is_skipped_not_the_rest_and_nan_is_null(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": i, "loss": float(i)} for i in range(6)]
  lines = [json.dumps(r) + "\n" for r in rows]
  lines[2] = '{"step": 2, "loss": 0.\n'  # torn in the middle of the history
  path.write_text("".join(lines))
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=5)
  writer.write(5, {"loss": float("nan"), "rollout": 2})
  writer.close()
  kept = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in kept] == [0, 1, 3, 4, 5]
  assert kept[-1] == {"step": 5, "loss": None, "rollout": 2}
  assert "NaN" not in path.read_text()


def test_a_fresh_run_keeps_a_metrics_file_it_finds_beside_its_own(tmp_path, caplog):
  theirs = '{"step": 0, "theirs": 1}\n'
  for n in (1, 2):
    (tmp_path / "metrics.jsonl").write_text(theirs)
    writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=0)
    writer.write(0, {"loss": 1.0})
    writer.close()
    assert (tmp_path / f"metrics.jsonl.before-{n}").read_text() == theirs
    assert "kept as" in caplog.text
    caplog.clear()
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [{"step": 0, "loss": 1.0}]


def test_metrics_rows_without_an_integer_step_are_skipped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": "1", "loss": 2.0}\n{"step": Infinity}\n'
                  '{"step": 1.0}\n{"step": true}\n[3]\n{"step": 2, "loss": 3.0}\n')
  assert [r["step"] for r in metrics_lib.read_rows(str(path))] == [0, 2]
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=2)  # resume keeps the good rows
  writer.close()
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0]
