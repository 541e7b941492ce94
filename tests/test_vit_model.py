"""ViT model: named configurations, per-head layout, head gates, sizes, pooling, drop-path."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from heat_jax.models import available_models, create_model, head_layout

# Architecture constants of the vit_jax models (width, heads, MLP, layers).
SIZES = {"Ti": (192, 3, 768, 12), "S": (384, 6, 1536, 12), "B": (768, 12, 3072, 12),
         "L": (1024, 16, 4096, 24), "H": (1280, 16, 5120, 32)}
VIT_NAMES = [n for n in available_models() if re.fullmatch(r"ViT-(Ti|S|B|L|H)_\d+", n)]


def _shapes(model, size):
  """Parameter shapes without materialising any parameter."""
  h, w = (size, size) if isinstance(size, int) else size
  x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  tree = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  return {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _random_params(model, size=32, seed=0):
  """Random parameters from numpy (no jitted init to compile): N(0, 0.1), scales ~1."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in sorted(_shapes(model, size).items()):
    value = rng.standard_normal(shape).astype(np.float32) * 0.1
    flat[key] = value + 1.0 if key.endswith("/scale") else value
  return traverse_util.unflatten_dict(flat, sep="/")


def _images(n=2, size=32, seed=0):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _layer_norm(x, p, eps=1e-6):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


@pytest.fixture(scope="module")
def tiny():
  """ViT-tiny (4 layers x 4 heads, width 64) with a random (non-zero) head."""
  model = create_model("ViT-tiny", 6, head_init="lecun")
  return model, _random_params(model, seed=1)


@pytest.fixture(scope="module")
def tiny_apply(tiny):
  """Jitted eval forward: (params, images, gates) -> (logits, block tokens)."""
  model, _ = tiny
  return jax.jit(lambda p, x, g: model.apply({"params": p}, x, head_gates=g,
                                             return_block_tokens=True))


def test_vit_names_registered():
  expected = {f"ViT-{s}_{p}" for s, ps in (("Ti", (16, 32)), ("S", (16, 32)),
                                             ("B", (16, 32)), ("L", (16, 32)),
                                             ("H", (14,))) for p in ps}
  assert expected <= set(VIT_NAMES)


@pytest.mark.parametrize("name", VIT_NAMES)
def test_named_config_per_head_shapes(name):
  size, patch = re.fullmatch(r"ViT-(\w+)_(\d+)", name).groups()
  d, h, mlp, depth = SIZES[size]
  patch, hd = int(patch), d // h
  model = create_model(name, 10)
  shapes = _shapes(model, 224)
  grid = 224 // patch
  assert shapes["embedding/kernel"] == (patch, patch, 3, d)
  assert shapes["cls"] == (1, 1, d)
  assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 1 + grid * grid, d)
  assert shapes["head/kernel"] == (d, 10)
  blocks = {k.split("/")[1] for k in shapes if k.startswith("Transformer/encoderblock_")}
  assert blocks == {f"encoderblock_{i}" for i in range(depth)}
  for i in (0, depth - 1):
    attn = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0"
    for proj in ("query", "key", "value"):
      assert shapes[f"{attn}/{proj}/kernel"] == (d, h, hd)
      assert shapes[f"{attn}/{proj}/bias"] == (h, hd)
    assert shapes[f"{attn}/out/kernel"] == (h, hd, d)
    assert shapes[f"{attn}/out/bias"] == (d,)
    mlp_block = f"Transformer/encoderblock_{i}/MlpBlock_0"
    assert shapes[f"{mlp_block}/Dense_0/kernel"] == (d, mlp)
    assert shapes[f"{mlp_block}/Dense_1/kernel"] == (mlp, d)
    for ln in ("LayerNorm_0", "LayerNorm_1"):
      assert shapes[f"Transformer/encoderblock_{i}/{ln}/scale"] == (d,)
  layout = head_layout(model)
  assert layout.shape == (depth, h)
  assert layout.total_heads == depth * h
  assert layout.valid.all()


def test_vit_b16_parameter_count():
  shapes = _shapes(create_model("ViT-B_16", 21843), 224)
  count = lambda keys: sum(int(np.prod(shapes[k])) for k in keys)  # noqa: E731
  body = [k for k in shapes if not k.startswith("head/")]
  assert count(body) == 85_798_656
  block = [k for k in shapes if k.startswith("Transformer/encoderblock_3/")]
  assert count(block) == 7_087_872
  assert count(["head/kernel", "head/bias"]) == 769 * 21843


def test_unknown_option_and_name_raise():
  from heat_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown option"):
    create_model("ViT-tiny", 3, hiden_size=8)
  with pytest.raises(ConfigError, match="unknown model"):
    create_model("ViT-Q_16", 3)


def test_gates_of_ones_equal_no_gates(tiny, tiny_apply):
  _, params = tiny
  x = _images()
  plain = np.asarray(tiny_apply(params, x, None)[0])
  gated = np.asarray(tiny_apply(params, x, jnp.ones((4, 4)))[0])
  assert np.abs(plain).max() > 1e-3
  np.testing.assert_allclose(gated, plain, rtol=0, atol=1e-6)


def _scale_out_kernels(params, gates):
  """Independent gating: scale head h's slice out/kernel[h] of every block."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  flat = {k: np.array(v) for k, v in flat.items()}
  for layer, row in enumerate(np.asarray(gates)):
    key = f"Transformer/encoderblock_{layer}/MultiHeadDotProductAttention_0/out/kernel"
    flat[key] = flat[key] * row[:, None, None]
  return traverse_util.unflatten_dict(flat, sep="/")


def test_zero_gate_removes_that_head(tiny, tiny_apply):
  _, params = tiny
  x = _images(seed=3)
  gates = np.ones((4, 4), np.float32)
  gates[1, 2] = 0.0
  gated = np.asarray(tiny_apply(params, x, jnp.asarray(gates))[0])
  removed = np.asarray(tiny_apply(_scale_out_kernels(params, gates), x, None)[0])
  plain = np.asarray(tiny_apply(params, x, None)[0])
  np.testing.assert_allclose(gated, removed, rtol=0, atol=1e-5)
  assert np.abs(gated - plain).max() > 1e-4  # the head mattered


def test_fractional_gates_scale_each_head(tiny, tiny_apply):
  _, params = tiny
  x = _images(seed=4)
  gates = np.random.default_rng(5).uniform(0, 2, (4, 4)).astype(np.float32)
  gated = np.asarray(tiny_apply(params, x, jnp.asarray(gates))[0])
  scaled = np.asarray(tiny_apply(_scale_out_kernels(params, gates), x, None)[0])
  np.testing.assert_allclose(gated, scaled, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 5), (4,), (3, 4), (4, 4, 1)])
def test_wrong_gate_shape_raises(tiny, shape):
  model, params = tiny
  with pytest.raises(ValueError, match="head_gates must have shape"):
    model.apply({"params": params}, _images(1), head_gates=jnp.ones(shape))


@pytest.mark.parametrize("hw", [(40, 40), (32, 48), (8, 16)])
def test_image_sizes_multiple_of_patch(hw):
  model = create_model("ViT-micro", 3)  # patch 8
  grid = (hw[0] // 8) * (hw[1] // 8)
  shapes = _shapes(model, hw)
  assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 1 + grid, 32)
  params = _random_params(model, hw)
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  assert out.shape == (2, 3)


@pytest.mark.parametrize("hw", [(36, 32), (32, 30), (4, 4)])
def test_image_size_not_multiple_of_patch_raises(hw):
  model = create_model("ViT-micro", 3)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    _shapes(model, hw)
  params = _random_params(model, 32)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    model.apply({"params": params}, jnp.zeros((1, *hw, 3)))


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_classifier_pooling(classifier):
  model = create_model("ViT-micro", 5, classifier=classifier, head_init="lecun")
  params = _random_params(model, seed=2)
  shapes = _shapes(model, 32)
  assert ("cls" in shapes) == (classifier == "token")
  assert shapes["Transformer/posembed_input/pos_embedding"] == (
      1, 16 + (classifier == "token"), 32)
  x = _images(3, seed=6)
  logits, blocks = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, return_block_tokens=True))(params, x)
  normed = _layer_norm(blocks[-1], params["Transformer"]["encoder_norm"])
  pooled = normed[:, 0] if classifier == "token" else normed.mean(axis=1)
  expected = pooled @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)
  assert np.abs(expected).max() > 1e-2


def test_unknown_classifier_raises():
  model = create_model("ViT-micro", 5, classifier="map")
  with pytest.raises(ValueError, match="classifier"):
    _shapes(model, 32)


def test_return_block_tokens_one_per_block(tiny, tiny_apply):
  model, params = tiny
  logits, blocks = tiny_apply(params, _images(2), None)
  assert logits.shape == (2, 6)
  assert isinstance(blocks, tuple) and len(blocks) == 4
  assert all(b.shape == (2, 1 + 64, 64) for b in blocks)
  assert not np.allclose(blocks[0], blocks[1])
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params,
                       jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out.shape == (2, 6)  # a plain array without return_block_tokens


def test_drop_path_train_vs_eval(tiny, tiny_apply):
  _, params = tiny  # same parameter tree as ViT-tiny with 6 classes
  model = create_model("ViT-tiny", 6, drop_path_rate=0.5, head_init="lecun")
  x = _images(4, seed=8)
  run = jax.jit(lambda p, x, key, train: model.apply(
      {"params": p}, x, train=train, return_block_tokens=True, rngs={"dropout": key}),
                static_argnums=3)
  eval_a, eval_blocks = run(params, x, jax.random.key(0), False)
  eval_b, _ = run(params, x, jax.random.key(1), False)
  no_drop, _ = tiny_apply(params, x, None)
  np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
  np.testing.assert_allclose(np.asarray(eval_a), np.asarray(no_drop), rtol=0, atol=1e-5)

  train_1, blocks_1 = run(params, x, jax.random.key(1), True)
  train_1b, _ = run(params, x, jax.random.key(1), True)
  train_2, _ = run(params, x, jax.random.key(2), True)
  np.testing.assert_array_equal(np.asarray(train_1), np.asarray(train_1b))
  assert np.abs(np.asarray(train_1) - np.asarray(train_2)).max() > 1e-4
  assert np.abs(np.asarray(train_1) - np.asarray(eval_a)).max() > 1e-4
  # Linear rates: the first block has rate 0 and is never dropped; the last one is.
  np.testing.assert_allclose(np.asarray(blocks_1[0]), np.asarray(eval_blocks[0]), atol=1e-5)
  assert np.abs(np.asarray(blocks_1[-1]) - np.asarray(eval_blocks[-1])).max() > 1e-4
