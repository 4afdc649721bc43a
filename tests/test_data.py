"""tasks/data.py: bad data files are named by file and line; the tiny setting rejects data files and
counts truncated prompts."""

import os
import re

import pytest

from dispo_jax import tiny_base, train as train_lib
from dispo_jax.run.config import ConfigError
from dispo_jax.tasks import data
from tests.helpers import read_metrics, small_config


def test_bad_data_files_name_file_and_line(tmp_path):
  bad_bytes = tmp_path / "bad.jsonl"
  bad_bytes.write_bytes(b'{"nums": [1, 2], "target": 3}\n{"nums": [1], "target": "\xff"}\n')
  with pytest.raises(data.DataError, match=r"bad\.jsonl:2: not UTF-8"):
    data.load_countdown(str(bad_bytes))
  csv_bad = tmp_path / "s.csv"
  csv_bad.write_bytes(b"Puzzle,Solution\n" + b"\xfe" * 3 + b",x\n")
  with pytest.raises(data.DataError, match=r"s\.csv:2: not UTF-8"):
    data.load_sudoku_csv(str(csv_bad))
  huge = tmp_path / "huge.csv"
  huge.write_text("Puzzle,Solution\n\"" + "1" * 200_000 + "\",x\n")
  with pytest.raises(data.DataError, match=r"huge\.csv:\d+: malformed CSV"):
    data.load_sudoku_csv(str(huge))
  for name, loader in (("e.jsonl", data.load_gsm8k), ("e.csv", data.load_sudoku_csv)):
    (tmp_path / name).write_text("\n\n" if name.endswith("jsonl") else "Puzzle,Solution\n")
    with pytest.raises(data.DataError, match=re.escape(name) + r": no rows"):
      loader(str(tmp_path / name))
  for row, what in (('{"nums": [1, 2], "target": 6.7}', "target=6.7"),
                    ('{"nums": [true, 2], "target": 3}', "nums=True"),
                    ('{"nums": [], "target": 3}', "no numbers"),
                    ('{"input": "1,2.5", "output": "3"}', "input='2.5'")):
    (tmp_path / "c.jsonl").write_text(row + "\n")
    with pytest.raises(data.DataError, match=r"c\.jsonl:1: .*" + re.escape(what)):
      data.load_countdown(str(tmp_path / "c.jsonl"))


def test_the_tiny_setting_rejects_data_files_and_truncation_is_counted(finished_run):
  with pytest.raises(ConfigError, match=r"data\.train_file / eval_file are set but the tiny"):
    train_lib.validate_config(small_config(**{"data.train_file": "/tmp/x.jsonl"}))
  rows = [r for r in read_metrics(finished_run) if "loss" in r]
  assert rows and all(r["prompts_truncated"] == 0 for r in rows)  # counted on every update
  from dispo_jax.model import tokenizer as tok
  base = tiny_base.base_folder(train_lib.base_spec(small_config()))
  tokenizer = tok.load_tokenizer(os.path.join(base, "tokenizer"))
  texts = [tok.render_chat("Sudoku 0200012413000001"), "short"]
  full = len(tokenizer(texts[0], add_special_tokens=False)["input_ids"])
  tokens, lengths, truncated = tok.encode_prompts(tokenizer, texts, full - 1, count_truncated=True)
  assert truncated == 1 and lengths[0] == full - 1
