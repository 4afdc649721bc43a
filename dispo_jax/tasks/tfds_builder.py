"""TensorFlow-Datasets access to the task data, without TensorFlow.

The builder writes ``array_record`` files and is read through ``tfds.data_source`` /
``builder.as_data_source()`` (random access; grain can shuffle, batch and shard it per host). The
``as_dataset()`` path would need TensorFlow and is not used.

Configs are the task names. Source files are read from ``manual_dir`` as ``{split}.{csv|jsonl|
parquet}`` in the public formats (see :mod:`dispo_jax.tasks.data`); Sudoku and Countdown fall back
to the bundled d1 test sets for their ``test`` split.

  ds = prepare("sudoku", data_dir="~/tensorflow_datasets", manual_dir="/data/sudoku")
  row = decode(ds["test"][0])          # {"puzzle": "...", "solution": "..."}
"""

from __future__ import annotations

import json
import os

import numpy as np

try:
  import tensorflow_datasets as tfds
except ImportError as e:  # an optional extra: the main command never needs it
  raise ImportError("dispo_jax.tasks.tfds_builder needs tensorflow-datasets: "
                    "pip install 'dispo_jax[data]'") from e

from dispo_jax.tasks import data as data_lib

_EXTENSIONS = (".csv", ".jsonl", ".parquet")


class DispoTasks(tfds.core.GeneratorBasedBuilder):
  """Sudoku, Countdown, GSM8K and MATH500 rows in dispo_jax's field names (JSON-encoded)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name)
                     for name in ("sudoku", "countdown", "gsm8k", "math500")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put {split}.csv (Sudoku, d1 format) or {split}.jsonl / {split}.parquet (HF formats) in "
      "manual_dir. Sudoku and Countdown use the bundled d1 test sets when test.* is absent.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"index": np.int64, "row_json": tfds.features.Text()}),
        homepage="https://github.com/dllm-reasoning/d1")

  def _split_generators(self, dl_manager):
    task = self.builder_config.name
    manual = getattr(dl_manager, "_manual_dir", None)
    splits = {}
    if manual is not None and os.path.isdir(manual):
      for file in sorted(os.listdir(manual)):
        split, ext = os.path.splitext(file)
        if ext in _EXTENSIONS:
          splits[split] = self._generate_examples(os.path.join(manual, file))
    if "test" not in splits and task in data_lib.BUNDLED_TEST_FILES:
      splits["test"] = self._generate_examples(None)
    if not splits:
      raise data_lib.DataError(f"no {task} source files in manual_dir={manual!r}: "
                               + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return splits

  def _generate_examples(self, path):
    rows = data_lib.load_rows(self.builder_config.name, path)
    for i, row in enumerate(rows):
      yield i, {"index": i, "row_json": json.dumps(row, sort_keys=True)}


def prepare(task: str, data_dir: str, manual_dir: str | None = None):
  """Builds (once) and returns ``{split: data source}`` for ``task``."""
  builder = DispoTasks(config=task, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder.as_data_source()


def decode(record) -> dict:
  """A data-source record back to the row dict."""
  text = record["row_json"]
  return json.loads(text.decode() if isinstance(text, bytes) else text)


def rows_in_order(source) -> list[dict]:
  """All rows of a split in their original order (tfds shuffles records on write)."""
  records = [source[i] for i in range(len(source))]
  return [decode(r) for r in sorted(records, key=lambda r: int(r["index"]))]
