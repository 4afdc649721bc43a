"""tiny_base.py: a diverging SFT of the tiny base stops naming the key and caches nothing."""

import pytest

from dispo_jax import tiny_base, train as train_lib
from dispo_jax.run.config import ConfigError
from tests.helpers import small_config


def test_a_data_key_added_at_its_default_keeps_cached_bases_and_another_value_retrains():
  from dispo_jax import recipes
  main = train_lib.base_spec(recipes.get_config("sudoku", "tiny"))
  # The main command's base as it was keyed before data.countdown_numbers existed.
  assert tiny_base.base_folder(main).endswith("sudoku-9a39372670df")
  c = small_config(task="countdown")
  cached = tiny_base.base_folder(train_lib.base_spec(c))
  c.data.countdown_numbers = (1, 9)
  assert tiny_base.base_folder(train_lib.base_spec(c)) != cached


def test_a_diverging_base_sft_stops_naming_the_key_and_caches_nothing(tmp_path):
  c = small_config(**{"base.learning_rate": 1e38, "base.cache_dir": str(tmp_path)})
  with pytest.raises(ConfigError, match=r"config\.base\.learning_rate=1e\+38: the tiny base's SFT "
                     r"diverged \(SFT step \d+: the loss is nan"):
    tiny_base.prepare_base(train_lib.base_spec(c), progress=False)
  root = tmp_path / "tiny_base"
  assert not root.exists() or not any(root.iterdir())
