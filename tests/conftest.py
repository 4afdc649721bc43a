"""Test set-up: 8 fake CPU devices (for sharding tests) and exact fp32 matmuls."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tiny bases and default run folders of this session (and of the CLIs it starts) stay out of ~.
# The many short CLI runs compile the same small programs: share XLA's compilations between them.
# The folders are made once per pytest session: xdist's workers inherit them from the controller,
# so they share the SFT'd bases (written atomically) and the compilations too.
if "DISPO_JAX_TEST_SESSION" not in os.environ:
  os.environ["DISPO_JAX_TEST_SESSION"] = str(os.getpid())
  os.environ["DISPO_JAX_CACHE"] = tempfile.mkdtemp(prefix="dispo_jax_test_cache_")
  os.environ["DISPO_JAX_RUNS"] = tempfile.mkdtemp(prefix="dispo_jax_test_runs_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dispo_jax_test_xla_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg():
  from dispo_jax.model.config import get_config
  return get_config("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
  from dispo_jax.model.llada import init_model
  return init_model(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def base_dir():
  """The cached folder of ``helpers.small_config()``'s SFT'd base (the session's
  ``$DISPO_JAX_CACHE``); tests that train request it so the base is built once."""
  from dispo_jax import tiny_base as tiny, train
  from tests.helpers import small_config
  spec = train.base_spec(small_config())
  tiny.prepare_base(spec, progress=False)
  return tiny.base_folder(spec)
