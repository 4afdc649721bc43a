"""Tokenizer: a byte-level BPE with LLaDA's special tokens, loaded through AutoTokenizer."""

import numpy as np
import pytest

from dispo_jax.model import tokenizer as tok

CORPUS = ["Respond in the following format: <reasoning> ... </reasoning> <answer> ... </answer>",
          "Solve the 4x4 sudoku 1032004000102300", "Using 3, 5, 7 make 22. 3*5+7=22"] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok"))
  tok.build_bpe_tokenizer(CORPUS, vocab_size=320, folder=path)
  return path


def test_chat_template_matches_llada():
  assert tok.render_chat("Hi?") == (
      "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_load_from_folder_and_special_ids(folder):
  t = tok.load_tokenizer(folder)
  ids = tok.special_ids(t)
  assert (ids.bos, ids.eos, ids.mask, ids.pad) == (0, 1, 2, 1)
  prompt = tok.render_chat("Solve 1032")
  encoded = t(prompt, add_special_tokens=False)["input_ids"]
  assert encoded[0] == ids.bos and ids.eot in encoded
  # special tokens are atomic and byte-level BPE round-trips arbitrary text
  assert t.decode(encoded) == prompt
  weird = "naïve ∑ 🙂 \t\n end"
  assert t.decode(t(weird, add_special_tokens=False)["input_ids"]) == weird


def test_encode_prompts_left_pads_and_truncates(folder):
  t = tok.load_tokenizer(folder)
  texts = [tok.render_chat("a"), tok.render_chat("Solve the 4x4 sudoku 1032004000102300 now")]
  full = [t(x, add_special_tokens=False)["input_ids"] for x in texts]
  length = len(full[1]) - 3  # forces left truncation of the long row
  tokens, lengths = tok.encode_prompts(t, texts, max_length=length)
  assert tokens.shape == (2, length) and tokens.dtype == np.int32
  assert lengths.tolist() == [len(full[0]), length]
  assert tokens[0, : length - len(full[0])].tolist() == [1] * (length - len(full[0]))
  assert tokens[0, length - len(full[0]):].tolist() == full[0]
  assert tokens[1].tolist() == full[1][-length:]  # left truncation keeps the end
  mask = tok.padding_mask(lengths, length)
  assert mask[0].sum() == len(full[0]) and mask[1].all()


def test_missing_special_token_is_named(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  raw = Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel()
  raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                                      show_progress=False))
  PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(str(tmp_path))
  with pytest.raises(tok.TokenizerError, match=r"lacks LLaDA special token\(s\).*<\|mdm_mask\|>"):
    tok.load_tokenizer(str(tmp_path))


def test_missing_folder():
  with pytest.raises(tok.TokenizerError, match="does not exist"):
    tok.load_tokenizer("/nonexistent/tokenizer")


def test_corrupt_tokenizer_json_is_reported(tmp_path, folder):
  import shutil
  bad = tmp_path / "bad"
  shutil.copytree(folder, bad)
  (bad / "tokenizer.json").write_text("{ not json")
  with pytest.raises(tok.TokenizerError, match="bad"):
    tok.load_tokenizer(str(bad))



@pytest.mark.parametrize("template, match", [
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
     r"did not finish rendering a prompt in 1 s"),
    ("{% for a in range(100000) %}{{ messages[0]['content'] }}{% endfor %}",
     r"renders a one-line prompt into 1,400,000 characters \(more than 100,000\)"),
    ("{{ messages[0]['content'] | no_such_filter }}",
     r"its chat template fails on a user turn \(TemplateAssertionError"),
])
def test_a_hostile_chat_template_is_refused_at_load_on_one_line(folder, tmp_path, monkeypatch,
                                                                template, match):
  monkeypatch.setattr(tok, "CHAT_TEMPLATE_LIMIT_S", 1.0)
  t = tok.load_tokenizer(folder)
  t.chat_template = template
  hostile = str(tmp_path / "hostile")
  t.save_pretrained(hostile)
  with pytest.raises(tok.TokenizerError, match=match):
    tok.load_tokenizer(hostile)
  assert tok.render_prompt(tok.load_tokenizer(folder), "Hi?").endswith(  # the timer is gone
      "<|start_header_id|>assistant<|end_header_id|>\n\n")
