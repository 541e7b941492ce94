"""The segmentation head as a model extension (`seg_head`): features -> decoder -> logits.

The backbone stays the plain ViT with its method's extensions; this extension replaces
its classifier (`Extension.head`) with a dense decoder and returns per-pixel logits
[B, H, W, C] at the input resolution (the decoder's stride-4 logits resized bilinearly,
as mmseg resizes them to the label size before the loss and for inference). In train
mode with `aux_weight > 0` it returns [B, H, W, 2C]: the main logits, then the FCN
auxiliary head's (`split_logits`).

Features (finest first, strides 4 / 8 / 16 / 32 for ViT-B/16):
  * an extension's `features` hook (HST dense: its four side stages), else
  * the ViT's blocks `blocks` (default 3, 5, 7, 11 = the 4th / 6th / 8th / 12th) as
    patch grids through the trainable `ViTNeck` (deconv x4, deconv x2, identity,
    max-pool): full fine-tuning, LoRA, linear (frozen backbone), HEAT.
Every parameter lives under `head/` (neck, decode, aux), so every method trains the
decoder exactly as it trains a classifier head (`partition.is_head`), and pretrained
checkpoints never provide it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from heat_jax.models import decoders
from heat_jax.models.extensions import Extension, Tokens, register_extension

Array = jax.Array


def is_dense(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` describes a segmentation run (`config.task_kind`)."""
  return config.get("task_kind", "classification") == "segmentation"


def split_logits(logits: Array, num_classes: int) -> tuple[Array, Optional[Array]]:
  """(main, auxiliary or None) of the head's output."""
  if logits.shape[-1] == 2 * num_classes:
    return logits[..., :num_classes], logits[..., num_classes:]
  return logits, None


class SegHead(nn.Module):
  """Neck (ViT grids only) + decoder + auxiliary FCN head, under the scope `head`."""

  num_classes: int
  decoder: str = "upernet"
  channels: int = 0
  aux_channels: int = 256
  aux: bool = True
  vit_neck: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: list[Array], out_hw: tuple[int, int], train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.vit_neck:
      feats = decoders.ViTNeck(name="neck", **kw)(feats, train)
    logits = decoders.build_decoder(self.decoder, self.num_classes, self.channels,
                                    name="decode", **kw)(feats, train)
    logits = decoders.resize(logits.astype(jnp.float32), out_hw)
    if not self.aux or not (train or self.is_initializing()):
      return logits   # eval: no auxiliary head (its parameters exist from init)
    level = feats[min(2, len(feats) - 1)]
    aux = decoders.FCNHead(self.num_classes, self.aux_channels, name="aux", **kw)(
        level, train)
    if not train:
      return logits
    return jnp.concatenate([logits, decoders.resize(aux.astype(jnp.float32), out_hw)], -1)


@register_extension
@dataclasses.dataclass(frozen=True)
class SegHeadSpec(Extension):
  """A decoder instead of the classifier; see the module docstring."""

  decoder: str = "upernet"
  channels: int = 0                   # 0 = the decoder's default (512 UperNet, 256 FPN)
  aux_channels: int = 256
  aux: bool = True
  blocks: tuple[int, ...] = (3, 5, 7, 11)

  kind = "seg_head"
  param_names = ()                    # everything is under `head` (always fresh)
  families = ("vit",)

  def head(self, host: nn.Module, features: Array, tokens: Tokens, num_classes: int, *,
           shared: Any, train: bool) -> Optional[Array]:
    if tokens.images is None:
      raise ValueError("seg_head needs the model's input images (Tokens.images)")
    b, h, w = tokens.images.shape[:3]
    if tokens.features is not None:
      feats, neck = list(tokens.features), False
    else:
      if max(self.blocks) >= len(tokens.blocks):
        raise ValueError(f"seg_head reads blocks {list(self.blocks)} but the model has "
                         f"{len(tokens.blocks)}")
      feats, neck = [], True
      for i in self.blocks:
        t, (gh, gw) = tokens.blocks[i], tokens.grids[i]
        feats.append(t[:, t.shape[1] - gh * gw:].reshape(b, gh, gw, t.shape[2]))
    return SegHead(num_classes, self.decoder, self.channels, self.aux_channels, self.aux,
                   neck, dtype=host.dtype, param_dtype=host.param_dtype, name="head")(
                       feats, (h, w), train)


def default_config() -> ml_collections.ConfigDict:
  """`config.seg`: the decoder, the loss and the inference of segmentation runs."""
  c = ml_collections.ConfigDict()
  c.decoder = "upernet"        # upernet | fpn
  c.channels = 0               # decoder width; 0 = 512 (upernet) / 256 (fpn neck)
  c.aux_weight = 0.4           # auxiliary FCN head's loss weight (0 = no aux head)
  c.aux_channels = 256
  c.blocks = "3,5,7,11"        # ViT blocks (0-based) feeding the neck (non-HST methods)
  c.ignore_index = 255
  c.mode = "slide"             # whole | slide
  c.crop = 0                   # slide window; 0 = config.model.image_size
  c.stride = 0                 # slide stride; 0 = two thirds of the crop (mmseg 341/512)
  c.scales = "1.0"             # test scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75
  c.flip = False               # also average the horizontally flipped view
  return c


def head_spec(seg: ml_collections.ConfigDict) -> SegHeadSpec:
  """The extension of `config.seg` (ConfigError on bad options)."""
  from heat_jax.errors import ConfigError
  if seg.decoder not in decoders.DECODERS:
    raise ConfigError(f"config.seg.decoder={seg.decoder!r} is not one of {decoders.DECODERS}")
  try:
    blocks = tuple(int(b) for b in str(seg.blocks).split(","))
  except ValueError:
    raise ConfigError(f"config.seg.blocks={seg.blocks!r} must be 4 comma-separated block "
                      "indices, e.g. 3,5,7,11") from None
  if len(blocks) != 4 or min(blocks) < 0:
    raise ConfigError(f"config.seg.blocks={seg.blocks!r} must be 4 block indices >= 0, "
                      "e.g. 3,5,7,11")
  if seg.channels < 0 or seg.aux_weight < 0 or seg.aux_channels < 1:
    raise ConfigError("config.seg.channels and aux_weight must be >= 0, aux_channels >= 1")
  return SegHeadSpec(decoder=str(seg.decoder), channels=int(seg.channels),
                     aux_channels=int(seg.aux_channels), aux=seg.aux_weight > 0,
                     blocks=blocks)
