"""HF checkpoint I/O: round trip, sharded loading, and every loader error."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dispo_jax.model import checkpoint, sharding
from dispo_jax.model.checkpoint import CheckpointError
from dispo_jax.model.config import get_config
from tests.helpers import SafetensorsReadSpy, random_hf_tensors, write_hf_folder




@pytest.fixture()
def folder(tmp_path, tiny_cfg):
  path = str(tmp_path / "hf")
  write_hf_folder(path, tiny_cfg, random_hf_tensors(tiny_cfg))
  return path


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def test_export_then_reload_is_identical(tmp_path, tiny_cfg, tiny_model):
  graphdef, state = tiny_model
  files = checkpoint.export_hf_checkpoint(tiny_cfg, state, str(tmp_path / "out"), dtype="float32",
                                          max_shard_bytes=200_000)
  assert len(files) > 1  # sharded with an index
  cfg, _, reloaded = checkpoint.load_hf_checkpoint(str(tmp_path / "out"))
  assert cfg == tiny_cfg
  assert _leaves_equal(state, reloaded)
  with open(tmp_path / "out" / "config.json") as f:
    hf = json.load(f)
  assert hf["d_model"] == tiny_cfg.d_model and hf["weight_tying"] is False


def test_torch_layout_on_disk(tmp_path, tiny_cfg, tiny_model):
  """Exported linears are torch's [out, in]: the transpose of the NNX kernel."""
  from safetensors.numpy import load_file
  _, state = tiny_model
  checkpoint.export_hf_checkpoint(tiny_cfg, state, str(tmp_path / "o"), dtype="float32")
  tensors = {}
  for f in os.listdir(tmp_path / "o"):
    if f.endswith(".safetensors"):
      tensors.update(load_file(str(tmp_path / "o" / f)))
  up = tensors["model.transformer.blocks.1.up_proj.weight"]
  assert up.shape == (tiny_cfg.mlp_hidden_size, tiny_cfg.d_model)
  np.testing.assert_array_equal(up.T, np.asarray(state["blocks"][1]["mlp"]["up_proj"]["kernel"][...]))


def test_bf16_export_and_load(tmp_path, tiny_cfg, tiny_model):
  _, state = tiny_model
  checkpoint.export_hf_checkpoint(tiny_cfg, state, str(tmp_path / "bf"), dtype="bfloat16")
  cfg, _, loaded = checkpoint.load_hf_checkpoint(str(tmp_path / "bf"))
  assert cfg.param_dtype == "bfloat16"
  leaf = jax.tree.leaves(loaded)[0]
  assert leaf.dtype == jnp.bfloat16
  cfg32, _, loaded32 = checkpoint.load_hf_checkpoint(str(tmp_path / "bf"), param_dtype="float32")
  assert jax.tree.leaves(loaded32)[0].dtype == jnp.float32


def test_load_into_mesh_sharding_matches_single_device(folder, tiny_cfg):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  _, graphdef, sharded = checkpoint.load_hf_checkpoint(folder, mesh)
  _, _, single = checkpoint.load_hf_checkpoint(folder)
  q = sharded["blocks"][0]["attn"]["q_proj"]["kernel"][...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # each device holds only its slice
  assert q.addressable_shards[0].data.shape == (tiny_cfg.d_model // 2, tiny_cfg.d_model // 2)
  assert _leaves_equal(sharded, single)


def test_load_reads_each_device_only_its_shard(folder, tiny_cfg, monkeypatch):
  """On a 4-device (fsdp 2 × tensor 2) mesh every parameter arrives in its rules-table sharding,
  each device holds a slice of the expected size, and the files give up exactly the distinct
  slices the devices hold, once each (never a whole sharded tensor)."""
  spy = SafetensorsReadSpy()
  monkeypatch.setattr(checkpoint, "safe_open", spy)
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
  _, _, state = checkpoint.load_hf_checkpoint(folder, mesh)
  expected = dict(nnx.to_flat_state(sharding.state_shardings(state, mesh)))
  held = 0
  for path, var in nnx.to_flat_state(state):
    value = var.get_value()
    assert value.sharding == expected[path], path
    spec = tuple(expected[path].spec) + (None,) * value.ndim
    want = tuple(d // (2 if axis else 1) for d, axis in zip(value.shape, spec))
    assert [s.data.shape for s in value.addressable_shards] == [want] * 4, path
    held += sum({str(s.index): s.data.nbytes for s in value.addressable_shards}.values())
  q = state["blocks"][0]["attn"]["q_proj"]["kernel"][...]
  assert [s.data.shape for s in q.addressable_shards] == [(tiny_cfg.d_model // 2,) * 2] * 4
  assert spy.bytes_read == held  # fp32 files into fp32 params: each distinct slice read once
  wte = [shape for name, shape in spy.reads if name == "model.transformer.wte.weight"]
  assert wte == [(tiny_cfg.vocab_size // 2, tiny_cfg.d_model // 2)] * 4


def test_export_refuses_non_finite_weights_and_writes_nothing(tmp_path, tiny_cfg, tiny_model):
  _, state = tiny_model
  broken = jax.tree.map(lambda x: x, state)
  kernel = broken["blocks"][1]["mlp"]["up_proj"]["kernel"]
  kernel[...] = kernel[...].at[0, :3].set(jnp.nan)
  with pytest.raises(CheckpointError, match=r"model\.transformer\.blocks\.1\.up_proj\.weight' has "
                     r"3 non-finite values"):
    checkpoint.export_hf_checkpoint(tiny_cfg, broken, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_missing_key(folder):
  index = os.path.join(folder, "model.safetensors.index.json")
  data = json.load(open(index))
  del data["weight_map"]["model.transformer.blocks.1.up_proj.weight"]
  json.dump(data, open(index, "w"))
  with pytest.raises(CheckpointError, match=r"missing key\(s\).*blocks\.1\.up_proj\.weight"):
    checkpoint.load_hf_checkpoint(folder)


def test_unexpected_key(tmp_path, tiny_cfg):
  tensors = random_hf_tensors(tiny_cfg)
  tensors["model.transformer.blocks.0.q_proj.bias"] = np.zeros(tiny_cfg.d_model, np.float32)
  write_hf_folder(str(tmp_path), tiny_cfg, tensors)
  with pytest.raises(CheckpointError, match=r"unexpected key\(s\).*q_proj\.bias"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_shape_mismatch_names_tensor_expected_and_got(tmp_path, tiny_cfg):
  tensors = random_hf_tensors(tiny_cfg)
  tensors["model.transformer.blocks.0.ff_proj.weight"] = np.zeros((100, tiny_cfg.d_model), np.float32)
  write_hf_folder(str(tmp_path), tiny_cfg, tensors)
  with pytest.raises(CheckpointError, match=r"shape mismatch for 'model\.transformer\.blocks\.0\."
                     r"ff_proj\.weight': expected \(192, 64\).*got \(100, 64\)"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_config_disagrees_with_weights(tmp_path, tiny_cfg):
  """config.json claims a wider model than the tensors: the first shape check names it."""
  write_hf_folder(str(tmp_path), tiny_cfg, random_hf_tensors(tiny_cfg),
                  hf_config=checkpoint.config_to_hf(tiny_cfg.replace(d_model=128), "float32"))
  with pytest.raises(CheckpointError, match="shape mismatch"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_config_disagrees_with_requested_config(folder, tiny_cfg):
  with pytest.raises(CheckpointError, match=r"n_layers: config.json has 2, expected 3"):
    checkpoint.load_hf_checkpoint(folder, config=tiny_cfg.replace(n_layers=3))


def test_truncated_shard_names_the_file(folder):
  shard = os.path.join(folder, "model-00002-of-00002.safetensors")
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
    checkpoint.load_hf_checkpoint(folder)


def test_an_index_pointing_outside_the_folder_is_refused(folder, tmp_path):
  index = os.path.join(folder, "model.safetensors.index.json")
  data = json.load(open(index))
  name = next(iter(data["weight_map"]))
  data["weight_map"][name] = "../elsewhere.safetensors"
  json.dump(data, open(index, "w"))
  with pytest.raises(CheckpointError, match=r"maps to '\.\./elsewhere\.safetensors', not a file "
                     r"name inside the checkpoint folder"):
    checkpoint.load_hf_checkpoint(folder)


def test_a_config_far_larger_than_its_files_is_refused_before_building_the_model(folder):
  path = os.path.join(folder, "config.json")
  hf = json.load(open(path))
  hf["n_layers"] = 10_000_000
  json.dump(hf, open(path, "w"))
  with pytest.raises(CheckpointError, match=r"describes [\d,]+ parameters \(10000000 layers"):
    checkpoint.load_hf_checkpoint(folder)


def test_non_float_or_non_finite_weights_are_refused(tmp_path, tiny_cfg):
  tensors = random_hf_tensors(tiny_cfg)
  tensors["model.transformer.blocks.0.q_proj.weight"][2, 3] = np.nan
  write_hf_folder(str(tmp_path / "nan"), tiny_cfg, tensors)
  with pytest.raises(CheckpointError, match=r"'model\.transformer\.blocks\.0\.q_proj\.weight' holds "
                     r"1 non-finite values"):
    checkpoint.load_hf_checkpoint(str(tmp_path / "nan"))
  tensors = random_hf_tensors(tiny_cfg)
  tensors["model.transformer.ln_f.weight"] = tensors["model.transformer.ln_f.weight"].astype(np.int8)
  write_hf_folder(str(tmp_path / "int8"), tiny_cfg, tensors)
  with pytest.raises(CheckpointError, match=r"'model\.transformer\.ln_f\.weight' is stored as I8"):
    checkpoint.load_hf_checkpoint(str(tmp_path / "int8"))


def test_missing_shard_file(folder):
  os.remove(os.path.join(folder, "model-00001-of-00002.safetensors"))
  with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors.*does not exist"):
    checkpoint.load_hf_checkpoint(folder)


def test_unsupported_config_feature(tmp_path, tiny_cfg):
  hf = checkpoint.config_to_hf(tiny_cfg, "float32")
  hf["weight_tying"] = True
  write_hf_folder(str(tmp_path), tiny_cfg, random_hf_tensors(tiny_cfg), hf_config=hf)
  with pytest.raises(CheckpointError, match=r"config\.json: weight_tying=True is not supported"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_malformed_config_json_names_line(tmp_path, tiny_cfg):
  write_hf_folder(str(tmp_path), tiny_cfg, random_hf_tensors(tiny_cfg))
  with open(tmp_path / "config.json", "w") as f:
    f.write('{\n  "d_model": 64,\n  oops\n}')
  with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 3"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_missing_config_json(tmp_path):
  with pytest.raises(CheckpointError, match="no config.json"):
    checkpoint.load_hf_checkpoint(str(tmp_path))


def test_real_llada_config_json_maps_to_the_8b_preset():
  """LLaDA-8B-Instruct's published config.json keys give exactly the llada_8b preset."""
  hf = {"activation_type": "silu", "alibi": False, "attention_layer_norm": False,
        "block_type": "llama", "d_model": 4096, "embedding_size": 126464, "eos_token_id": 126081,
        "include_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
        "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
        "mlp_ratio": 4, "model_type": "llada", "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
        "pad_token_id": 126081, "rms_norm_eps": 1e-05, "rope": True, "rope_theta": 500000.0,
        "scale_logits": False, "vocab_size": 126464, "weight_tying": False, "bos_token_id": 126080,
        "torch_dtype": "bfloat16"}
  assert checkpoint.config_from_hf(hf) == get_config("llada_8b")


def test_exported_weights_are_readable_by_the_group(tmp_path):
  from dispo_jax.model import checkpoint, llada
  from dispo_jax.model.config import get_config
  cfg = get_config("tiny", vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64)
  _, state = llada.init_model(cfg)
  old = os.umask(0o022)
  try:
    files = checkpoint.export_hf_checkpoint(cfg, state, str(tmp_path / "export"), dtype="float32")
  finally:
    os.umask(old)
  assert all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)
