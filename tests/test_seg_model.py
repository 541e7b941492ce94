"""Decoder pieces and the dense model: torch's adaptive pooling bins, feature strides,
output shapes in train / eval mode, HST's dense side stages."""

import jax
import jax.numpy as jnp
import numpy as np

from heat_jax.methods.hst import HstSpec
from heat_jax.models import create_model, decoders
from heat_jax.segmentation.head import SegHeadSpec
from heat_jax.training import partition


def test_adaptive_avg_pool_matches_torch_bins():
  x = np.random.default_rng(0).standard_normal((2, 7, 5, 3)).astype(np.float32)
  got = np.asarray(decoders.adaptive_avg_pool(jnp.asarray(x), 3))
  want = np.zeros((2, 3, 3, 3), np.float32)
  for i in range(3):                      # torch: start floor(i*n/s), end ceil((i+1)*n/s)
    for j in range(3):
      ys = slice(int(np.floor(i * 7 / 3)), int(np.ceil((i + 1) * 7 / 3)))
      xs = slice(int(np.floor(j * 5 / 3)), int(np.ceil((j + 1) * 5 / 3)))
      want[:, i, j] = x[:, ys, xs].mean(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _shapes(exts, size=64):
  m = create_model("ViT-demo", 5, image_size=size, extensions=exts)
  v = jax.eval_shape(lambda r: m.init(r, jnp.zeros((2, size, size, 3))), jax.random.key(0))
  return m, v


def test_vit_neck_and_decoders_shapes():
  for decoder in ("upernet", "fpn"):
    m, v = _shapes((SegHeadSpec(decoder=decoder, channels=16, blocks=(0, 1, 2, 3)),))
    flat = partition.flatten(v["params"])
    assert all(k.split("/")[0] != "head" or k.startswith(("head/neck", "head/decode",
                                                          "head/aux")) for k in flat)
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda v, x: m.apply(v, x), v, x)
    assert out.shape == (2, 64, 64, 5)
    train = jax.eval_shape(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"],
                                                rngs={"dropout": jax.random.key(0)})[0], v, x)
    assert train.shape == (2, 64, 64, 10)          # main + auxiliary logits
  neck = decoders.ViTNeck()
  grids = [jnp.zeros((1, 8, 8, 4))] * 4
  nv = jax.eval_shape(lambda r: neck.init(r, grids, False), jax.random.key(0))
  maps = jax.eval_shape(lambda v: neck.apply(v, grids, False), nv)
  assert [m.shape[1] for m in maps] == [32, 16, 8, 4]   # strides p/4, p/2, p, 2p


def test_hst_dense_provides_four_stage_maps():
  hst = HstSpec(widths=(8, 16, 24, 32), heads=(2, 2, 2, 2), stages=(0, 1, 2, 3), dense=True)
  m, v = _shapes((hst, SegHeadSpec(channels=16)))
  flat = partition.flatten(v["params"])
  assert not any(k.startswith("head/neck") for k in flat)   # HST maps feed the decoder
  assert not any(k == "head/kernel" for k in flat)          # and HST adds no classifier
  seen = {}

  class Probe(SegHeadSpec):
    def head(self, host, features, tokens, num_classes, *, shared, train):
      seen["maps"] = [f.shape for f in tokens.features]
      return super().head(host, features, tokens, num_classes, shared=shared, train=train)

  m2 = create_model("ViT-demo", 5, image_size=64, extensions=(hst, Probe(channels=16)))
  jax.eval_shape(lambda r: m2.init(r, jnp.zeros((1, 64, 64, 3))), jax.random.key(0))
  assert seen["maps"] == [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 24), (1, 2, 2, 32)]
