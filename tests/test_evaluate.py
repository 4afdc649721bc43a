"""The evaluation command end to end on a tiny model: files, metrics, resume after interruption."""

import json
import os

import pytest

from dispo_jax import evaluate
from dispo_jax.model import checkpoint, llada, tokenizer as tok
from dispo_jax.model.config import get_config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("tiny_ckpt"))
  corpus = ["Solve the following Sudoku puzzle: 3102200002100320 <answer>3142</answer>"] * 30
  t = tok.build_bpe_tokenizer(corpus, vocab_size=300, folder=folder)
  ids = tok.special_ids(t)
  cfg = get_config("tiny", vocab_size=len(t), bos_token_id=ids.bos, eos_token_id=ids.eos,
                   pad_token_id=ids.pad, mask_token_id=ids.mask)
  _, state = llada.init_model(cfg)
  checkpoint.export_hf_checkpoint(cfg, state, folder, dtype="float32")
  return folder


def _config(checkpoint_dir):
  from dispo_jax import recipes
  c = recipes.eval_config("tiny")
  c.checkpoint = checkpoint_dir
  c.limit = 6
  c.batch_size = 4
  c.mesh.data = 4  # one row per device: the sharded-rows path
  c.gen_lengths = (16,)
  return c


def test_evaluate_end_to_end_and_resume(tiny_checkpoint, tmp_path, capsys):
  workdir = str(tmp_path / "eval")
  config = _config(tiny_checkpoint)
  first = evaluate.run(config, workdir)
  out_file = os.path.join(workdir, "sudoku_16.jsonl")
  lines = open(out_file).read().splitlines()
  assert len(lines) == 6 and first["sudoku"][16]["n"] == 6
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert 0.0 <= metrics["sudoku"]["16"]["accuracy"] <= 1.0
  assert "sudoku" in capsys.readouterr().out  # the table
  # Interrupt: keep 2 complete lines and half of the third (a torn write).
  with open(out_file, "w") as f:
    f.write("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
  second = evaluate.run(config, workdir)
  assert second["sudoku"][16]["resumed_from"] == 2
  assert open(out_file).read().splitlines() == lines  # greedy: identical generations
  assert second["sudoku"][16]["accuracy"] == first["sudoku"][16]["accuracy"]
  # Complete: a third run evaluates nothing new.
  assert evaluate.run(config, workdir)["sudoku"][16]["resumed_from"] == 6


def test_sudoku_few_shot_protocol_puts_the_worked_examples_in_the_prompt(tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
  seen = []
  real = evaluate.generate_texts

  def spy(graphdef, state, tokenizer, prompts, *args, **kwargs):
    seen.extend(prompts)
    return real(graphdef, state, tokenizer, prompts, *args, **kwargs)

  monkeypatch.setattr(evaluate, "generate_texts", spy)
  config = _config(tiny_checkpoint)
  config.limit, config.sudoku_few_shot, config.max_prompt_length = 2, 3, 2048
  evaluate.run(config, str(tmp_path / "few_shot"))
  assert seen and all(p.count("Question: Solve the following Sudoku puzzle") == 4 for p in seen)


def test_evaluating_another_checkpoint_into_a_used_folder_stops(tiny_checkpoint, tmp_path):
  """Generations of checkpoint A are never reported as checkpoint B's (resume was by line count)."""
  import shutil
  workdir = str(tmp_path / "eval")
  evaluate.run(_config(tiny_checkpoint), workdir)
  other = str(tmp_path / "other_ckpt")
  shutil.copytree(tiny_checkpoint, other)
  cfg, _, state = checkpoint.load_hf_checkpoint(other)
  state["wte"][...] = state["wte"][...] * 2  # different weights
  checkpoint.export_hf_checkpoint(cfg, state, other, dtype="float32")
  with pytest.raises(evaluate.FingerprintMismatch, match=r"another evaluation \(different model\)"):
    evaluate.run(_config(other), workdir)
  changed = _config(tiny_checkpoint)
  changed.block_length = 8  # another protocol, same model
  with pytest.raises(evaluate.FingerprintMismatch, match=r"different sampler"):
    evaluate.run(changed, workdir)
  evaluate.run(_config(other), str(tmp_path / "fresh"))  # a fresh folder is fine


def test_an_evaluation_folder_in_use_stops_before_anything_is_loaded(tmp_path):
  """Two evaluations into one folder would both append to its generations files: the second
  stops on the training runs' lock, naming the folder, and leaves the lock alone."""
  import socket
  from dispo_jax.run.workdir import WorkdirError
  owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
  (tmp_path / "lock").write_text(owner)
  with pytest.raises(WorkdirError, match=f"{tmp_path} is in use by another run"):
    evaluate.run(None, str(tmp_path))  # the config is never read
  assert (tmp_path / "lock").read_text() == owner


def _record(index):
  return json.dumps({"index": index, "row": {}, "generation": "x", "correct": 1, "total": 1})


@pytest.mark.parametrize("lines, match", [
    ([_record(0), "{not json", _record(2)], r"g\.jsonl:2: not a JSON line"),
    ([_record(0), json.dumps({"index": 1, "total": 1})], r"g\.jsonl:2: not a generations record"),
    ([_record(0), json.dumps({"index": 1, "correct": "1", "total": 1})], r":2: not a generations"),
    ([_record(0), _record(5)], r"g\.jsonl:2: not a generations record \(index 1"),
    ([json.dumps([1, 2])], r"g\.jsonl:1: not a generations record"),
    (["[" * 100000 + "]" * 100000], r"g\.jsonl:1: not a JSON line"),
    ([_record(i) for i in range(4)], r"g\.jsonl: 4 records for 3 rows"),
])
def test_a_damaged_generations_file_is_named_by_line_and_left_as_it_is(tmp_path, lines, match):
  path = tmp_path / "g.jsonl"
  text = "\n".join(lines) + "\n"
  path.write_text(text)
  with pytest.raises(evaluate.GenerationsFileError, match=match):
    evaluate._read_done(str(path), num_rows=3)
  assert path.read_text() == text


def test_a_torn_last_line_is_dropped_and_resumed(tmp_path):
  path = tmp_path / "g.jsonl"
  path.write_text(_record(0) + "\n" + _record(1)[:10])
  assert [r["index"] for r in evaluate._read_done(str(path), num_rows=3)] == [0]
  assert path.read_text() == _record(0) + "\n"


@pytest.mark.parametrize("content", ['{"model": ', "[1, 2]"])
def test_a_damaged_fingerprint_file_is_named(tmp_path, content):
  out = tmp_path / "g.jsonl"
  (tmp_path / "g.jsonl.fingerprint.json").write_text(content)
  with pytest.raises(evaluate.GenerationsFileError, match=r"g\.jsonl\.fingerprint\.json: "):
    evaluate.check_fingerprint(str(out), {"model": "m"})


def test_a_tiny_runs_export_scores_as_the_run_scored_it(tmp_path):
  """``evaluate`` on a tiny run's export reads the export's record (compact prompts, held-out
  rows, the run's sampler shape) and reproduces the run's own final held-out accuracy; with d1's
  protocol forced it asks d1's prompts instead, which the tiny model was never taught."""
  from dispo_jax import recipes, train as train_lib
  from tests.helpers import small_config
  workdir = str(tmp_path / "run")
  train_lib.train(small_config(export_hf=True, eval_every=2), workdir)
  final = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))
           if "eval/accuracy" in line][-1]
  assert final["step"] == 4
  c = recipes.eval_config("tiny")
  c.checkpoint, c.batch_size, c.mesh.data, c.limit = os.path.join(workdir, "export"), 8, 1, 0
  out = evaluate.run(c, str(tmp_path / "eval"))
  assert list(out) == ["sudoku"] and list(out["sudoku"]) == [24]  # the run's gen_length
  assert out["sudoku"][24]["n"] == 8  # the run's eval_rows
  assert out["sudoku"][24]["accuracy"] == final["eval/accuracy"]
  def as_before_the_rename(path):  # the sampler's steps key, renamed num_timesteps
    record = json.load(open(path))
    record["sampler"]["steps"] = record["sampler"].pop("num_timesteps")
    json.dump(record, open(path, "w"))
  as_before_the_rename(str(tmp_path / "eval" / "sudoku_24.jsonl.fingerprint.json"))
  resumed = evaluate.run(c, str(tmp_path / "eval"))["sudoku"][24]  # all 8 rows found done
  assert resumed == {**out["sudoku"][24], "resumed_from": 8}
  as_before_the_rename(os.path.join(workdir, "export", "dispo_jax_export.json"))
  assert evaluate.run(c, str(tmp_path / "eval_old_export")) == out
  c.prompt_format, c.limit = "d1", 8
  out = evaluate.run(c, str(tmp_path / "eval_d1"))
  assert list(out["sudoku"]) == [32] and out["sudoku"][32]["n"] == 8


def test_prompt_format_tiny_needs_a_tiny_export(tiny_checkpoint, tmp_path):
  c = _config(tiny_checkpoint)
  c.prompt_format = "tiny"
  with pytest.raises(ValueError, match="needs a tiny run's export"):
    evaluate.run(c, str(tmp_path / "e"))
  c.prompt_format = "chat"
  with pytest.raises(ValueError, match="config.prompt_format='chat' is invalid"):
    evaluate.run(c, str(tmp_path / "e2"))
