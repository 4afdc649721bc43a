"""Tokenizer loading, LLaDA's chat template, and left-padded prompt encoding.

The tokenizer is whatever ``transformers.AutoTokenizer`` loads from a local folder (LLaDA ships a
byte-level BPE ``PreTrainedTokenizerFast``). :func:`build_bpe_tokenizer` makes a small tokenizer of
the same kind, with LLaDA's special tokens, for tests and tiny models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from typing import Iterable, Sequence

import numpy as np

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MASK = "<|mdm_mask|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (BOS, EOS, MASK, START_HEADER, END_HEADER, EOT)


class TokenizerError(ValueError):
  """A tokenizer folder that lacks what LLaDA needs."""


# LLaDA-8B-Instruct's chat template (its tokenizer_config.json): Llama-3 headers, the content of
# every turn trimmed, and the assistant header always appended.
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}")


def render_chat(user_content: str, system_prompt: str | None = None) -> str:
  """LLaDA's chat template, written out, for one user turn plus the assistant header.

  ``<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>``
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``, every turn's content stripped of
  surrounding whitespace as the template's ``| trim`` does. A system prompt, if given, is a system
  turn before the user turn. Equal to :data:`LLADA_CHAT_TEMPLATE` rendered (tested); used where a
  tokenizer has no template of its own.
  """
  parts = [BOS]
  if system_prompt is not None:
    parts.append(f"{START_HEADER}system{END_HEADER}\n\n{system_prompt.strip()}{EOT}")
  parts.append(f"{START_HEADER}user{END_HEADER}\n\n{user_content.strip()}{EOT}")
  parts.append(f"{START_HEADER}assistant{END_HEADER}\n\n")
  return "".join(parts)


# The longest a tokenizer's chat template may take to render one prompt, and the most characters it
# may make of a one-line probe: a hostile or broken template fails with a line, it never hangs.
CHAT_TEMPLATE_LIMIT_S = 10.0
CHAT_TEMPLATE_PROBE_MAX_CHARS = 100_000


class _RenderTimeout(Exception):
  pass


@contextlib.contextmanager
def _time_limit(seconds: float):
  """Raises :class:`_RenderTimeout` in the block after ``seconds`` (SIGALRM): only on the main
  thread and when no other real-time timer is running (a test runner's timeout keeps its own)."""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
    yield
    return

  def stop(signum, frame):
    raise _RenderTimeout

  previous = signal.signal(signal.SIGALRM, stop)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def render_prompt(tokenizer, user_content: str) -> str:
  """The prompt text for one user turn: the tokenizer's own chat template
  (``apply_chat_template(..., add_generation_prompt=True)``, as d1 renders LLaDA's prompts) when it
  has one, else :func:`render_chat`. A template that takes over :data:`CHAT_TEMPLATE_LIMIT_S`, or
  fails, raises :class:`TokenizerError`."""
  if not getattr(tokenizer, "chat_template", None):
    return render_chat(user_content)
  name = getattr(tokenizer, "name_or_path", "") or "tokenizer"
  try:
    with _time_limit(CHAT_TEMPLATE_LIMIT_S):
      return tokenizer.apply_chat_template([{"role": "user", "content": user_content}],
                                           tokenize=False, add_generation_prompt=True)
  except _RenderTimeout:
    raise TokenizerError(f"{name}: its chat template did not finish rendering a prompt in "
                         f"{CHAT_TEMPLATE_LIMIT_S:g} s (tokenizer_config.json 'chat_template')"
                         ) from None
  except Exception as e:  # jinja2's TemplateError, SecurityError, a TypeError in a filter
    raise TokenizerError(f"{name}: its chat template fails on a user turn "
                         f"({type(e).__name__}: {e})") from e


def check_chat_template(tokenizer) -> None:
  """Renders a one-line probe prompt: a template that hangs, fails or blows up (over
  :data:`CHAT_TEMPLATE_PROBE_MAX_CHARS`) is refused at load, before any compute."""
  text = render_prompt(tokenizer, "What is 1 + 1?")
  if len(text) > CHAT_TEMPLATE_PROBE_MAX_CHARS:
    raise TokenizerError(f"{getattr(tokenizer, 'name_or_path', '')}: its chat template renders a "
                         f"one-line prompt into {len(text):,} characters (more than "
                         f"{CHAT_TEMPLATE_PROBE_MAX_CHARS:,})")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the special tokens a diffusion sampler needs."""
  bos: int
  eos: int
  pad: int
  mask: int
  eot: int


def special_ids(tokenizer) -> SpecialIds:
  """Reads LLaDA's special ids from a loaded tokenizer (errors name the missing token)."""
  vocab = tokenizer.get_vocab()
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise TokenizerError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} lacks LLaDA "
                         f"special token(s) {missing}")
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab[EOS]
  return SpecialIds(bos=vocab[BOS], eos=vocab[EOS], pad=pad, mask=vocab[MASK], eot=vocab[EOT])


def _import_transformers_quietly() -> None:
  """Imports transformers without its "PyTorch was not found" notice (printed at import): only its
  tokenizers are used here, JAX does the modelling. Later warnings keep their usual level; a
  ``TRANSFORMERS_VERBOSITY`` the user set is respected."""
  import sys
  if "transformers" in sys.modules or "TRANSFORMERS_VERBOSITY" in os.environ:
    return
  os.environ["TRANSFORMERS_VERBOSITY"] = "error"
  try:
    import transformers  # noqa: F401
    from transformers.utils import logging as hf_logging
  finally:
    del os.environ["TRANSFORMERS_VERBOSITY"]
  hf_logging.set_verbosity_warning()


def load_tokenizer(folder: str):
  """Loads a tokenizer from a local folder with ``AutoTokenizer`` (never touches a hub)."""
  _import_transformers_quietly()
  from transformers import AutoTokenizer

  if not os.path.isdir(folder):
    raise TokenizerError(f"{folder}: tokenizer folder does not exist")
  try:
    with _without_model_type_notice():
      tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
  except (OSError, ValueError, KeyError) as e:
    raise TokenizerError(f"{folder}: cannot load a tokenizer: {e}") from e
  special_ids(tokenizer)  # validate now, not in the middle of a run
  check_chat_template(tokenizer)
  return tokenizer


class _DropModelTypeNotice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "to instantiate a model of type" not in record.getMessage()


@contextlib.contextmanager
def _without_model_type_notice():
  """Drops transformers' "You are using a model of type `llada` to instantiate a model of type"
  notice: ``AutoTokenizer`` reads a LLaDA folder's ``config.json`` (``model_type: llada``, a
  remote-code model transformers does not know) only to find the tokenizer class. Every other
  message of that logger still shows."""
  logger = logging.getLogger("transformers.configuration_utils")
  notice = _DropModelTypeNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def encode_prompts(tokenizer, texts: Sequence[str], max_length: int,
                   pad_id: int | None = None, count_truncated: bool = False):
  """Tokenises rendered prompts, left-truncated and left-padded to ``max_length``.

  Returns:
    tokens: ``[B, max_length]`` int32, padding on the left.
    lengths: ``[B]`` int32, the number of real (non-pad) tokens of each row.
    truncated (only with ``count_truncated``): how many prompts lost tokens on the left.
  """
  if pad_id is None:
    pad_id = special_ids(tokenizer).pad
  ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  tokens, lengths = left_pad([row[-max_length:] for row in ids], max_length, pad_id)
  if count_truncated:
    return tokens, lengths, sum(len(row) > max_length for row in ids)
  return tokens, lengths


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads (and left-truncates) token lists to ``[B, length]`` int32, with true lengths."""
  tokens = np.full((len(rows), length), pad_id, dtype=np.int32)
  lengths = np.zeros((len(rows),), dtype=np.int32)
  for i, row in enumerate(rows):
    row = list(row)[-length:] if length else []
    if row:
      tokens[i, length - len(row):] = row
    lengths[i] = len(row)
  return tokens, lengths


def padding_mask(lengths: np.ndarray, length: int) -> np.ndarray:
  """``[B, length]`` bool, True on the real tokens of left-padded rows."""
  return np.arange(length)[None, :] >= (length - np.asarray(lengths))[:, None]


def build_bpe_tokenizer(corpus: Iterable[str], vocab_size: int, folder: str | None = None,
                        individual_digits: bool = False):
  """Trains a small byte-level BPE tokenizer with LLaDA's special tokens.

  The special tokens take ids ``0..5`` in :data:`SPECIAL_TOKENS` order. If ``folder`` is given the
  tokenizer is saved there (``tokenizer.json`` + config) and can be loaded with
  :func:`load_tokenizer`. ``individual_digits`` keeps every digit its own token (Sudoku cells).
  Returns the ``PreTrainedTokenizerFast``.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  _import_transformers_quietly()
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                byte_level]) if individual_digits else byte_level)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                 pad_token=EOS, mask_token=MASK,
                                 additional_special_tokens=[START_HEADER, END_HEADER, EOT])
  fast.chat_template = LLADA_CHAT_TEMPLATE
  if folder is not None:
    fast.save_pretrained(folder)
  return fast

