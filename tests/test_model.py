"""LLaDA forward: golden test against transformers' PyTorch Llama, and architecture properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dispo_jax.model import checkpoint, llada
from dispo_jax.model.config import get_config
from tests.helpers import random_hf_tensors, write_hf_folder


def _torch_llama_from_llada_tensors(cfg, tensors):
  """transformers' LlamaForCausalLM with LLaDA's hyper-parameters and the given weights."""
  torch = pytest.importorskip("torch", reason="torch is an optional test extra (pip install "
                              "-e '.[torch]'); the golden test needs it")
  from transformers import LlamaConfig, LlamaForCausalLM

  hf_cfg = LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden_size,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_heads, rms_norm_eps=cfg.rms_norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      max_position_embeddings=cfg.max_sequence_length, attention_bias=False, mlp_bias=False,
      tie_word_embeddings=False, attn_implementation="eager")
  model = LlamaForCausalLM(hf_cfg).eval()
  llama_names = {
      "model.transformer.wte.weight": "model.embed_tokens.weight",
      "model.transformer.ln_f.weight": "model.norm.weight",
      "model.transformer.ff_out.weight": "lm_head.weight",
  }
  per_block = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
               "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj",
               "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
  for i in range(cfg.n_layers):
    for ours, theirs in per_block.items():
      llama_names[f"model.transformer.blocks.{i}.{ours}.weight"] = f"model.layers.{i}.{theirs}.weight"
  state = {llama_names[k]: torch.from_numpy(v) for k, v in tensors.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
  return torch, model


def _torch_logits(torch, model, tokens, bidirectional=True):
  b, l = tokens.shape
  ids = torch.from_numpy(np.asarray(tokens, np.int64))
  with torch.no_grad():
    if bidirectional:
      mask = torch.zeros((b, 1, l, l), dtype=torch.float32)  # additive: attend everywhere
      return model(input_ids=ids, attention_mask=mask).logits.numpy()
    return model(input_ids=ids).logits.numpy()


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  cfg = get_config("tiny", n_layers=2)
  tensors = random_hf_tensors(cfg, seed=3)
  folder = str(tmp_path_factory.mktemp("golden_hf"))
  write_hf_folder(folder, cfg, tensors)
  torch, model = _torch_llama_from_llada_tensors(cfg, tensors)
  return cfg, folder, torch, model


def test_logits_match_transformers_llama_bidirectional(golden):
  cfg, folder, torch, model = golden
  loaded_cfg, graphdef, state = checkpoint.load_hf_checkpoint(folder, param_dtype="float32")
  assert loaded_cfg == cfg
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(3, 17))
  ours = np.asarray(jax.jit(llada.forward, static_argnums=0)(graphdef, state, jnp.asarray(tokens)))
  theirs = _torch_logits(torch, model, tokens)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
  # The reference really is bidirectional: the causal Llama differs from it.
  causal = _torch_logits(torch, model, tokens, bidirectional=False)
  assert np.abs(causal - theirs).max() > 1e-3


def test_key_padding_mask_matches_truncated_sequence(golden):
  """Masked (left-pad) keys have no influence: same as running the unpadded row alone."""
  cfg, folder, torch, model = golden
  _, graphdef, state = checkpoint.load_hf_checkpoint(folder, param_dtype="float32")
  rng = np.random.default_rng(1)
  real = rng.integers(0, cfg.vocab_size, size=(1, 9))
  pad = np.full((1, 4), cfg.pad_token_id)
  padded = np.concatenate([pad, real], axis=1)
  key_mask = np.arange(13)[None] >= 4
  # RoPE is relative, so shifting the positions of the real tokens changes nothing.
  ours = llada.forward(graphdef, state, jnp.asarray(padded), jnp.asarray(key_mask))[:, 4:]
  ref = llada.forward(graphdef, state, jnp.asarray(real))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-5)
  unmasked = llada.forward(graphdef, state, jnp.asarray(padded))[:, 4:]
  assert np.abs(np.asarray(unmasked) - np.asarray(ref)).max() > 1e-4


def test_bidirectional_late_token_changes_early_logits(tiny_cfg, tiny_model):
  graphdef, state = tiny_model
  tokens = jnp.arange(12, dtype=jnp.int32)[None] + 7
  changed = tokens.at[0, -1].set(3)
  a = llada.forward(graphdef, state, tokens)
  b = llada.forward(graphdef, state, changed)
  assert float(jnp.abs(a[0, 0] - b[0, 0]).max()) > 1e-6


def test_rope_is_rotate_half_in_fp32():
  head_dim, theta = 8, 10_000.0
  x = np.random.default_rng(0).standard_normal((1, 3, 1, head_dim)).astype(np.float32)
  pos = np.array([[0, 1, 5]])
  cos, sin = llada.rope_tables(jnp.asarray(pos), head_dim, theta)
  out = np.asarray(llada.apply_rope(jnp.asarray(x), cos, sin))
  # Independent reference: pair dimension i with i + head_dim/2 and rotate by pos * theta^(-2i/d).
  ref = np.empty_like(x)
  half = head_dim // 2
  for p_idx, p in enumerate(pos[0]):
    for i in range(half):
      angle = p * theta ** (-2 * i / head_dim)
      a, b = x[0, p_idx, 0, i], x[0, p_idx, 0, i + half]
      ref[0, p_idx, 0, i] = a * np.cos(angle) - b * np.sin(angle)
      ref[0, p_idx, 0, i + half] = b * np.cos(angle) + a * np.sin(angle)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  # bf16 inputs are rotated in fp32 and cast back.
  out_bf16 = llada.apply_rope(jnp.asarray(x, jnp.bfloat16), cos, sin)
  assert out_bf16.dtype == jnp.bfloat16


def test_rmsnorm_cast_order_bf16():
  """Normalise in fp32, cast to bf16, then multiply by the weight in bf16 (LLaDA's order)."""
  cfg = get_config("tiny", compute_dtype="bfloat16", param_dtype="bfloat16")
  norm = llada.RMSNorm(cfg, rngs=__import__("flax").nnx.Rngs(0))
  w = (1 + 0.37 * np.random.default_rng(0).standard_normal(cfg.d_model)).astype(np.float32)
  norm.weight[...] = jnp.asarray(w, jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, cfg.d_model)) * 3, jnp.bfloat16)
  x32 = np.asarray(x, np.float32)
  normed = (x32 / np.sqrt((x32 ** 2).mean(-1, keepdims=True) + cfg.rms_norm_eps))
  expected = jnp.asarray(w, jnp.bfloat16) * jnp.asarray(normed, jnp.bfloat16)
  got = norm(x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


def test_llada_8b_parameter_count_exact():
  cfg = get_config("llada_8b")
  _, abstract = llada.abstract_model(cfg)
  assert llada.count_params(abstract) == 8_015_581_184 == cfg.num_params()
  assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_hidden_size,
          cfg.vocab_size) == (4096, 32, 32, 128, 12288, 126464)
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.mask_token_id) == (126080, 126081, 126336)


def test_remat_gives_same_logits_and_grads(tiny_cfg):
  tokens = jnp.arange(10, dtype=jnp.int32)[None] % tiny_cfg.vocab_size
  outs = []
  for remat in (False, True):
    graphdef, state = llada.init_model(tiny_cfg.replace(remat=remat), seed=1)
    loss = lambda s: llada.forward(graphdef, s, tokens).astype(jnp.float32).mean()
    outs.append(jax.jit(jax.value_and_grad(loss))(state))
  (l0, g0), (l1, g1) = outs
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_hidden_states_then_head_equals_forward(tiny_model):
  graphdef, state = tiny_model
  tokens = jnp.arange(6, dtype=jnp.int32)[None]
  h = llada.hidden_states(graphdef, state, tokens)
  np.testing.assert_allclose(llada.lm_head(graphdef, state, h[:, 2:4]),
                             llada.forward(graphdef, state, tokens)[:, 2:4], atol=1e-6)


def test_bf16_compute_runs_and_stays_close(tiny_cfg):
  g32, s32 = llada.init_model(tiny_cfg, seed=2)
  g16, s16 = llada.init_model(tiny_cfg.replace(compute_dtype="bfloat16"), seed=2)
  tokens = jnp.arange(8, dtype=jnp.int32)[None]
  a = llada.forward(g32, s32, tokens)
  b = llada.forward(g16, s16, tokens)
  assert b.dtype == jnp.bfloat16 and a.dtype == jnp.float32
  assert float(jnp.abs(a - b.astype(jnp.float32)).max()) < 0.05


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=30, n_heads=4), "not divisible"),
    (dict(mask_token_id=999), "outside the vocabulary"),
    (dict(param_dtype="float8"), "param_dtype"),
    (dict(n_layers=0), "n_layers"),
])
def test_config_validation_names_the_field(bad, match):
  with pytest.raises(ValueError, match=match):
    get_config("tiny").replace(**bad)


def test_unknown_preset():
  with pytest.raises(KeyError, match="Unknown LLaDA preset"):
    get_config("llada_80b")


def test_lora_starts_as_the_base_model_and_reference_ignores_adapters(tiny_cfg):
  from dispo_jax.model.config import LoRAConfig
  from dispo_jax.model.llada import LoRACall
  lora = LoRAConfig(rank=4, alpha=8, dropout=0.1)
  graphdef, state = llada.init_model(tiny_cfg, seed=3, lora=lora)
  g_base, base_only = llada.init_model(tiny_cfg, seed=3)
  tokens = jnp.arange(9, dtype=jnp.int32)[None]
  g, lora_state, base_state = llada.split_lora(graphdef, state)
  n_lora = llada.count_params(lora_state)
  # q, k, v: d×r + r×d each; up: d×r + r×mlp; per layer
  d, m, r = tiny_cfg.d_model, tiny_cfg.mlp_hidden_size, 4
  assert n_lora == tiny_cfg.n_layers * (3 * 2 * d * r + d * r + r * m)
  with_lora = llada.forward(g, (base_state, lora_state), tokens)
  np.testing.assert_allclose(with_lora, llada.forward(g_base, base_only, tokens), atol=1e-6)
  bumped = jax.tree.map(lambda x: x + 0.1, lora_state)
  on = llada.forward(g, (base_state, bumped), tokens)
  off = llada.forward(g, (base_state, bumped), tokens, lora=LoRACall(False))
  assert float(jnp.abs(on - with_lora).max()) > 1e-3
  np.testing.assert_allclose(off, with_lora, atol=1e-6)
  dropped = llada.forward(g, (base_state, bumped), tokens, lora=LoRACall(True, jax.random.key(0)))
  assert float(jnp.abs(dropped - on).max()) > 1e-6  # dropout acts only when given a key


def test_lora_config_validation():
  from dispo_jax.model.config import LoRAConfig
  with pytest.raises(ValueError, match=r"unknown \['lm_head'\]"):
    LoRAConfig(targets=("q_proj", "lm_head"))
  with pytest.raises(ValueError, match="rank must be positive"):
    LoRAConfig(rank=0)
