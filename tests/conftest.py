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


@pytest.fixture(scope="session")
def micro():
  """A 1-layer model over a 5-token vocabulary (ids 0..3 are actions, 4 is MASK), whose policy is
  spread out and non-uniform: ``(cfg, apply_fn(params, tokens, key_mask), params)``."""
  from dispo_jax.model import llada
  from dispo_jax.model.config import get_config
  cfg = get_config("tiny", vocab_size=5, d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32)
  graphdef, state = llada.init_model(cfg, seed=7)
  state["ff_out"]["kernel"][...] = state["ff_out"]["kernel"][...] * 6
  apply_fn = lambda params, tokens, key_mask: llada.forward(graphdef, params, tokens, key_mask)
  return cfg, apply_fn, state


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, base_dir):
  """A finished 4-update run of ``helpers.small_config()`` with checkpoints at 2 and 4."""
  import os
  from dispo_jax import train
  from tests.helpers import small_config
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  os.makedirs(workdir)
  train.train(small_config(num_steps=4, checkpoint_every=2), workdir)
  return workdir
