"""Swin model: shapes, head layout, head gates, window / shift masks, PETL extensions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from heat_jax.data.preprocess import resolve_value_range
from heat_jax.models import create_model, head_layout, layers, model_defaults, model_info
from heat_jax.models import swin
from heat_jax.methods.adapter import AdapterSpec
from heat_jax.methods.lora import LoraSpec
from heat_jax.models.attention_paths import attention_paths
from heat_jax.testing import fake_swin


def _flat_shapes(model, size):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return {k: tuple(v.shape) for k, v in
          traverse_util.flatten_dict(shapes["params"], sep="/").items()}


@pytest.fixture(scope="module")
def tiny():
  """Swin-tiny with seeded random weights (no jitted init: it compiles slowly on CPU)."""
  model = create_model("Swin-tiny", 5)
  state = fake_swin.swin_state_dict(**fake_swin.TINY, num_classes=5, seed=3)
  params = jax.tree_util.tree_map(jnp.asarray, fake_swin.flax_params(state, model))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  apply = jax.jit(lambda p, x, g: model.apply({"params": p}, x, head_gates=g))
  return model, params, x, apply


@pytest.fixture(scope="module")
def tiny_plain(tiny):
  """Logits and block tokens of the plain (ungated) tiny model."""
  model, params, x, _ = tiny
  return jax.jit(lambda p, x: model.apply({"params": p}, x, return_block_tokens=True))(
      params, x)


def test_registered_sizes():
  for size in ("T", "S", "B", "L"):
    d224, d384 = model_defaults(f"Swin-{size}"), model_defaults(f"Swin-{size}_384")
    assert (d224["window_size"], d224["image_size"]) == (7, 224)
    assert (d384["window_size"], d384["image_size"]) == (12, 384)
    assert d224["depths"] == d384["depths"] and d224["num_heads"] == d384["num_heads"]
  assert model_defaults("Swin-B")["embed_dim"] == 128
  assert create_model("Swin-tiny", 3).family == "swin"


def test_swin_b_head_layout_and_parameter_count():
  model = create_model("Swin-B", 1000)
  layout = head_layout(model)
  assert layout.total_heads == 376
  assert layout.shape == (24, 32)
  assert int(layout.valid.sum()) == 376
  shapes = _flat_shapes(model, 224)
  body = sum(int(np.prod(s)) for k, s in shapes.items() if not k.startswith("head/"))
  assert body == 86_743_224
  assert shapes["head/kernel"] == (1024, 1000)
  # Per-head layout in every block; head_dim 32 everywhere; 13 x 13 tables (window 7).
  i = 0
  for s, (depth, heads) in enumerate(zip((2, 2, 18, 2), (4, 8, 16, 32))):
    c = 128 * 2 ** s
    for b in range(depth):
      pre = f"layers_{s}/blocks_{b}/attn"
      for name in ("query", "key", "value"):
        assert shapes[f"{pre}/{name}/kernel"] == (c, heads, 32)
        assert shapes[f"{pre}/{name}/bias"] == (heads, 32)
      assert shapes[f"{pre}/out/kernel"] == (heads, 32, c)
      assert shapes[f"{pre}/relative_position_bias_table"] == (169, heads)
      assert shapes[f"layers_{s}/blocks_{b}/mlp/fc1/kernel"] == (c, 4 * c)
      assert layout.heads_per_layer[i] == heads
      i += 1
    if s > 0:
      assert shapes[f"layers_{s}/downsample/reduction/kernel"] == (2 * c, c)
      assert f"layers_{s}/downsample/reduction/bias" not in shapes
  assert "layers_0/downsample/norm/scale" not in shapes
  assert shapes["patch_embed/proj/kernel"] == (4, 4, 3, 128)


def test_swin_b_384_tables():
  shapes = _flat_shapes(create_model("Swin-B_384", 10), 384)
  tables = [v for k, v in shapes.items() if k.endswith("relative_position_bias_table")]
  assert len(tables) == 24 and all(t[0] == 23 * 23 for t in tables)


def test_attention_sites_follow_gate_rows(tiny):
  model, params, _, _ = tiny
  paths = attention_paths(params)
  assert ["/".join(p) for p in paths] == [
      "layers_0/blocks_0/attn", "layers_0/blocks_1/attn",
      "layers_1/blocks_0/attn", "layers_1/blocks_1/attn"]
  heads = [params[p[0]][p[1]]["attn"]["query"]["kernel"].shape[1] for p in paths]
  assert tuple(heads) == model.heads_per_layer == (2, 2, 4, 4)


def test_shapes_and_block_tokens(tiny, tiny_plain):
  model, params, x, _ = tiny
  logits, tokens = tiny_plain
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert [t.shape for t in tokens] == [(2, 64, 32), (2, 64, 32), (2, 16, 64), (2, 16, 64)]
  with pytest.raises(ValueError, match="multiple of the patch size"):
    model.apply({"params": params}, jnp.zeros((1, 30, 30, 3)))


def test_ones_gate_is_plain_model(tiny, tiny_plain):
  model, params, x, apply = tiny
  plain = tiny_plain[0]
  ones = apply(params, x, jnp.ones(head_layout(model).shape))
  np.testing.assert_allclose(ones, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("row,head", [(1, 1), (2, 3)])
def test_zero_gate_removes_head_exactly(tiny, row, head):
  model, params, x, apply = tiny
  layout = head_layout(model)
  gates = np.ones(layout.shape, np.float32)
  gates[row, head] = 0.0
  gated = apply(params, x, jnp.asarray(gates))
  # The same head removed by zeroing its rows of the output projection.
  s, b = divmod(row, 2)
  flat = traverse_util.flatten_dict(params, sep="/")
  kernel = np.array(flat[f"layers_{s}/blocks_{b}/attn/out/kernel"])
  kernel[head] = 0.0
  flat = {**flat, f"layers_{s}/blocks_{b}/attn/out/kernel": jnp.asarray(kernel)}
  removed = apply(traverse_util.unflatten_dict(flat, sep="/"), x,
                  jnp.ones(layout.shape))
  np.testing.assert_allclose(gated, removed, rtol=0, atol=1e-6)
  plain = apply(params, x, jnp.ones(layout.shape))
  assert np.abs(np.asarray(gated) - np.asarray(plain)).max() > 1e-3


def test_ragged_gates_ignore_absent_heads(tiny):
  model, params, x, apply = tiny
  layout = head_layout(model)
  gates = np.ones(layout.shape, np.float32)
  gates[~layout.valid] = np.nan  # entries beyond a block's heads are never read
  out = apply(params, x, jnp.asarray(gates))
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, apply(params, x, jnp.ones(layout.shape)), atol=1e-6)
  # Gradients w.r.t. the gates (Taylor scores) are zero exactly where no head exists.
  grad = jax.jit(jax.grad(lambda g: model.apply({"params": params}, x, head_gates=g).sum()))(
      jnp.ones(layout.shape))
  assert np.all(np.asarray(grad)[~layout.valid] == 0)
  assert np.all(np.abs(np.asarray(grad)[layout.valid]) > 0)
  with pytest.raises(ValueError, match="head_gates must have shape"):
    model.apply({"params": params}, x, head_gates=jnp.ones((4, 2)))


def _reference_mask(h, w, win, shift):
  """Independent rule: after rolling by -shift, a token is 'wrapped' on an axis when its
  rolled coordinate is >= size - shift; two tokens of one window may attend to each other
  iff they are wrapped alike on both axes (i.e. they were neighbours before the roll)."""
  n_wy, n_wx = h // win[0], w // win[1]
  area = win[0] * win[1]
  mask = np.zeros((n_wy * n_wx, area, area), np.float32)
  for wy, wx in itertools.product(range(n_wy), range(n_wx)):
    coords = [(wy * win[0] + i, wx * win[1] + j) for i in range(win[0]) for j in range(win[1])]
    for a, (y1, x1) in enumerate(coords):
      for b, (y2, x2) in enumerate(coords):
        same = ((y1 >= h - shift[0]) == (y2 >= h - shift[0])
                and (x1 >= w - shift[1]) == (x2 >= w - shift[1]))
        mask[wy * n_wx + wx, a, b] = 0.0 if same else -100.0
  return mask


@pytest.mark.parametrize("h,w,win,shift", [(8, 8, (4, 4), (2, 2)), (14, 14, (7, 7), (3, 3)),
                                           (12, 8, (4, 4), (2, 2)), (6, 9, (3, 3), (1, 1))])
def test_shift_mask_matches_independent_rule(h, w, win, shift):
  mask = swin.shift_window_mask(h, w, win, shift)
  np.testing.assert_array_equal(mask, _reference_mask(h, w, win, shift))
  assert mask.shape == ((h // win[0]) * (w // win[1]), win[0] * win[1], win[0] * win[1])


@pytest.mark.parametrize("wh,ww", [(7, 7), (3, 5)])
def test_relative_position_index(wh, ww):
  index = swin.relative_position_index(wh, ww)
  coords = [(y, x) for y in range(wh) for x in range(ww)]
  table_rows = {}
  for a, (y1, x1) in enumerate(coords):
    for b, (y2, x2) in enumerate(coords):
      table_rows.setdefault((y1 - y2, x1 - x2), set()).add(int(index[a, b]))
  # One row per relative offset, all rows distinct, every row of the table used.
  assert all(len(v) == 1 for v in table_rows.values())
  rows = sorted(v.pop() for v in table_rows.values())
  assert rows == list(range((2 * wh - 1) * (2 * ww - 1)))
  assert index[0, 0] == (wh - 1) * (2 * ww - 1) + ww - 1  # zero offset in the middle
  assert index[ww, 0] == wh * (2 * ww - 1) + ww - 1  # offset (+1, 0): one row of 2ww-1 on


def test_window_partition_roundtrip_and_order():
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  win = swin.window_partition(x, (4, 4))
  assert win.shape == (2, 6, 16, 3)
  np.testing.assert_array_equal(win[1, 4], x[1, 4:8, 4:8].reshape(16, 3))  # window row 1, col 1
  np.testing.assert_array_equal(swin.window_merge(win, (4, 4), 8, 12), x)


def test_window_clamped_to_small_maps():
  assert swin.window_and_shift((4, 4), 4, 2) == ((4, 4), (0, 0))
  assert swin.window_and_shift((8, 4), 4, 2) == ((4, 4), (2, 0))
  assert swin.window_and_shift((56, 56), 7, 3) == ((7, 7), (3, 3))


def test_patch_merging_order():
  merge = swin.PatchMerging(out_dim=4)
  x = jnp.arange(1 * 4 * 4 * 1, dtype=jnp.float32).reshape(1, 4, 4, 1)
  params = {"norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "reduction": {"kernel": jnp.eye(4)}}
  y = merge.apply({"params": params}, x)
  # Before the norm, the top-left output gathers (0,0), (1,0), (0,1), (1,1) in that order.
  v = np.array([0.0, 4.0, 1.0, 5.0])
  expected = (v - v.mean()) / np.sqrt(v.var() + 1e-5)
  np.testing.assert_allclose(y[0, 0, 0], expected, atol=1e-5)


def test_lora_and_adapters_are_wired_in(tiny, tiny_plain):
  """Extensions add their own subtrees; zero up/b = plain model, nonzero changes it."""
  _, params, x, _ = tiny
  plain = tiny_plain[0]
  base = traverse_util.flatten_dict(params, sep="/")
  rng = np.random.default_rng(0)
  cases = {
      "lora": dict(extensions=(LoraSpec(rank=2),)),
      "parallel": dict(extensions=(AdapterSpec(dim=4, style="parallel"),)),
      "serial": dict(extensions=(AdapterSpec(dim=4, style="serial"),)),
  }

  def zero_at_init(key):  # LoRA `b` and the adapters' `up` layer
    return key.endswith("/b") or "/up/" in key

  for name, extra in cases.items():
    m = create_model("Swin-tiny", 5, **extra)
    shapes = _flat_shapes(m, 32)
    added = sorted(k for k in shapes if k not in base)
    assert set(base) <= set(shapes)
    if name == "lora":
      assert shapes["layers_1/blocks_0/attn/lora_query/b"] == (2, 4, 16)
      assert shapes["layers_1/blocks_0/attn/lora_value/a"] == (64, 2)
      assert all("/attn/lora_query/" in k or "/attn/lora_value/" in k for k in added)
    elif name == "parallel":
      assert all("/adapter/" in k for k in added) and len(added) == 4 * 4
    else:
      assert sum("/adapter_attn/" in k for k in added) == 4 * 4
      assert sum("/adapter_mlp/" in k for k in added) == 4 * 4
    apply = jax.jit(lambda p, x: m.apply({"params": p}, x))
    for zero in (True, False):
      ext = {k: (np.zeros(shapes[k], np.float32) if zero and zero_at_init(k) else
                 rng.standard_normal(shapes[k]).astype(np.float32) * 0.3) for k in added}
      out = apply(traverse_util.unflatten_dict({**base, **ext}, sep="/"), x)
      if zero:
        np.testing.assert_allclose(out, plain, atol=1e-5)
      else:
        assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 1e-3, name
  with pytest.raises(ValueError, match="adapter style"):
    bad = create_model("Swin-tiny", 5, extensions=(AdapterSpec(style="sideways"),))
    jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_drop_path_only_in_training(tiny, tiny_plain):
  _, params, x, _ = tiny
  model = create_model("Swin-tiny", 5, drop_path_rate=0.5)
  run = jax.jit(lambda p, x, rng, train: model.apply(
      {"params": p}, x, train=train, rngs={"dropout": rng}), static_argnums=3)
  np.testing.assert_allclose(run(params, x, jax.random.key(0), False), tiny_plain[0],
                             atol=1e-6)
  t1 = run(params, x, jax.random.key(5), True)
  t2 = run(params, x, jax.random.key(6), True)
  assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-4


def test_swin_uses_imagenet_value_range():
  for name in ("Swin-tiny", "Swin-B"):
    assert resolve_value_range("auto", model_info(name).value_range) == "imagenet"
  assert resolve_value_range("minus1_1", model_info("Swin-B").value_range) == "minus1_1"
