"""Segmentation decoders (Flax linen) on a list of multi-scale features, finest first.

  UperNet (Xiao et al. 2018, mmseg `UPerHead`): a pyramid pooling module (PPM, pool
    scales 1, 2, 3, 6) on the coarsest map, 1x1 lateral convs, a top-down path (the
    coarser map resized bilinearly and added), 3x3 FPN convs, every level resized to
    the finest and concatenated, a 3x3 bottleneck, dropout 0.1, a 1x1 classifier.
    `channels` 512. ConvModule = conv (no bias) -> BatchNorm -> ReLU.
  Semantic FPN (Kirillov et al. 2019, mmseg `FPN` neck + `FPNHead`): FPN neck (1x1
    laterals with bias, nearest-neighbour top-down, 3x3 output convs; 256 channels),
    then per level 3x3 ConvModules (128 channels) each followed by a bilinear 2x
    upsampling until the finest stride, summed, dropout 0.1, a 1x1 classifier.
  FCN auxiliary head (mmseg `FCNHead`, num_convs=1, 256 channels) on the third level
    (stride 16), used in training only with loss weight 0.4.
  ViT neck (ViTDet / BEiT / mmseg ViT-adapter): one ViT grid (stride p) turned into four
    maps: deconv 2x2 s2 -> BN -> GELU -> deconv 2x2 s2 (p/4), deconv 2x2 s2 (p/2),
    identity (p), max-pool 2x2 (2p).

Bilinear resizes are half-pixel, no antialias (torch's align_corners=False). Parameter
initialisation follows flax defaults except the classifier, normal(0.01) and zero bias
as mmseg's `cls_seg`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DECODERS = ("upernet", "fpn")


def resize(x: Array, hw: Sequence[int], method: str = "bilinear") -> Array:
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method, antialias=False)


def _pool_matrix(n: int, size: int) -> np.ndarray:
  """[size, n]: row i averages torch's adaptive bin [floor(i n / s), ceil((i + 1) n / s))."""
  m = np.zeros((size, n), np.float32)
  for i in range(size):
    a, b = (i * n) // size, -(-((i + 1) * n) // size)
    m[i, a:b] = 1.0 / (b - a)
  return m


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """torch's AdaptiveAvgPool2d(size) as two small matrix products (one op each)."""
  ph = jnp.asarray(_pool_matrix(x.shape[1], size), x.dtype)
  pw = jnp.asarray(_pool_matrix(x.shape[2], size), x.dtype)
  return jnp.einsum("sh,bhwc,tw->bstc", ph, x, pw)


class ConvModule(nn.Module):
  """conv (k, no bias) -> BatchNorm -> ReLU."""

  features: int
  kernel: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel,) * 2, padding=((pad, pad), (pad, pad)),
                use_bias=False, name="conv", **kw)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name="bn", **kw)(x)
    return nn.relu(x)


class Classifier(nn.Module):
  """mmseg's cls_seg: dropout -> 1x1 conv (normal(0.01) kernel, zero bias)."""

  num_classes: int
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01),
                   name="conv_seg", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class UperNet(nn.Module):
  """UPerHead: logits [B, h0, w0, C] at the finest feature's resolution."""

  num_classes: int
  channels: int = 512
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[Array], train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    top = feats[-1]
    hw = top.shape[1:3]
    ppm = [top] + [resize(ConvModule(self.channels, 1, name=f"ppm_{i}", **kw)(
        adaptive_avg_pool(top, s), train), hw) for i, s in enumerate(self.pool_scales)]
    laterals = [ConvModule(self.channels, 1, name=f"lateral_{i}", **kw)(f, train)
                for i, f in enumerate(feats[:-1])]
    laterals.append(ConvModule(self.channels, 3, name="bottleneck", **kw)(
        jnp.concatenate(ppm, axis=-1), train))
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
    outs = [ConvModule(self.channels, 3, name=f"fpn_{i}", **kw)(l, train)
            for i, l in enumerate(laterals[:-1])] + [laterals[-1]]
    size = outs[0].shape[1:3]
    x = jnp.concatenate([resize(o, size) for o in outs], axis=-1)
    x = ConvModule(self.channels, 3, name="fpn_bottleneck", **kw)(x, train)
    return Classifier(self.num_classes, self.dropout, name="cls", **kw)(x, train)


class SemanticFPN(nn.Module):
  """FPN neck + FPNHead: logits [B, h0, w0, C] at the finest feature's resolution.

  Level i is taken to have twice the stride of level i - 1 (strides 4, 8, 16, 32).
  """

  num_classes: int
  neck_channels: int = 256
  channels: int = 128
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[Array], train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    laterals = [nn.Conv(self.neck_channels, (1, 1), name=f"lateral_{i}", **kw)(f)
                for i, f in enumerate(feats)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3],
                                                 "nearest")
    outs = [nn.Conv(self.neck_channels, (3, 3), padding=((1, 1), (1, 1)), name=f"fpn_{i}",
                    **kw)(l) for i, l in enumerate(laterals)]
    size = outs[0].shape[1:3]
    total = None
    for i, x in enumerate(outs):
      for j in range(max(i, 1)):
        x = ConvModule(self.channels, 3, name=f"scale_{i}_{j}", **kw)(x, train)
        if i:
          x = resize(x, (x.shape[1] * 2, x.shape[2] * 2))
      x = resize(x, size)   # no-op unless a map's size is not an exact power of 2 apart
      total = x if total is None else total + x
    return Classifier(self.num_classes, self.dropout, name="cls", **kw)(total, train)


class FCNHead(nn.Module):
  """mmseg FCNHead (num_convs=1, no input concat): the auxiliary head."""

  num_classes: int
  channels: int = 256
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ConvModule(self.channels, 3, name="conv_0", **kw)(x, train)
    return Classifier(self.num_classes, self.dropout, name="cls", **kw)(x, train)


class ViTNeck(nn.Module):
  """One [B, gh, gw, D] grid per level -> maps at 4x, 2x, 1x and 0.5x the grid."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, grids: Sequence[Array], train: bool) -> list[Array]:
    if len(grids) != 4:
      raise ValueError(f"the ViT neck takes 4 block outputs, got {len(grids)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = grids[0].shape[-1]
    up = lambda name: nn.ConvTranspose(d, (2, 2), strides=(2, 2), name=name, **kw)
    x0 = up("up4_0")(grids[0])
    x0 = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      name="up4_bn", **kw)(x0)
    x0 = up("up4_1")(nn.gelu(x0, approximate=False))
    x1 = up("up2")(grids[1])
    x3 = nn.max_pool(grids[3], (2, 2), strides=(2, 2))
    return [x0, x1, grids[2], x3]


def build_decoder(decoder: str, num_classes: int, channels: int, **kw: Any) -> nn.Module:
  """The decoder module `decoder` (one of DECODERS) with `channels` (0 = its default)."""
  if decoder == "upernet":
    return UperNet(num_classes, channels=channels or 512, **kw)
  if decoder == "fpn":
    return SemanticFPN(num_classes, neck_channels=channels or 256,
                       channels=max((channels or 256) // 2, 1), **kw)
  raise ValueError(f"decoder {decoder!r} is not one of {DECODERS}")
