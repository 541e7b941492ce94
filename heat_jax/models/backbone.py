"""The base every backbone module shares, and the record of a registered model.

`Backbone` holds the fields and helpers common to all backbones (ViT, Swin, ...): the
classifier size and init, PETL extensions, dtypes, the input geometry, the attention
layout (`heads_per_layer`, `widths`) and the classifier helper (`classify`). Code
outside `models/` asks a module these questions instead of switching on its family.

`Family` is what the rest of heat_jax needs to know about a registered model beyond
its module: its checkpoint format (`name`: checkpoints register a converter and an
exporter under it), the preprocessing `config.data.value_range='auto'` means, and
which `config.model` fields the module takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from heat_jax.models.extensions import Extension, Hooks, Tokens

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Family:
  """A registered model's checkpoint format, preprocessing and config fields.

  Attributes:
    name: checkpoint format key (`vit`: vit_jax npz; `timm_vit`: timm safetensors;
      `swin`: timm Swin); `heat_jax.checkpoints` registers converter and exporter by it.
    value_range: what `config.data.value_range='auto'` resolves to (the pre-training
      normalisation; `heat_jax.data.preprocess.VALUE_RANGES`).
    config_fields: `config.model` fields passed to the module besides image_size and
      drop_path_rate (e.g. `classifier`).
    source: where the architecture comes from (a timm name, 'vit_jax', ...).
  """

  name: str
  value_range: str = "minus1_1"
  config_fields: tuple[str, ...] = ()
  source: str = ""


class Backbone(nn.Module):
  """Fields and helpers shared by every backbone (subclasses add their geometry).

  Subclasses set the class attribute `family` (the architecture extensions declare
  support for: 'vit', 'swin') and implement `heads_per_layer` and `widths`.
  `checkpoint_format` names the registered `Family` (converter, exporter): a timm
  ViT and a vit_jax ViT are one architecture with two file formats.
  """

  num_classes: int
  patch_size: int = 16
  image_size: int = 224
  drop_path_rate: float = 0.0
  head_init: str = "zeros"
  extensions: tuple[Extension, ...] = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  checkpoint_format: str = ""   # its Family record's name (set by register_model)

  family: ClassVar[str] = ""

  @property
  def heads_per_layer(self) -> tuple[int, ...]:
    """Attention heads of every block, in head_gates row order."""
    raise NotImplementedError

  @property
  def widths(self) -> tuple[int, ...]:
    """The token width of every block (one entry per row of `heads_per_layer`)."""
    raise NotImplementedError

  @property
  def num_layers_total(self) -> int:
    return len(self.heads_per_layer)

  def hooks(self) -> Hooks:
    """The extensions of this forward pass, validated for `family`."""
    return Hooks.build(self, self.extensions, self.family)

  def classify(self, hooks: Hooks, features: Array, tokens: Tokens,
               train: bool) -> Array:
    """Logits (float32): an extension's classifier if one replaces it, else `head`."""
    logits = hooks.head(self, features, tokens, self.num_classes, train)
    if logits is None:
      init = (nn.initializers.zeros if self.head_init == "zeros"
              else nn.initializers.lecun_normal())
      logits = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="head")(features)
    return logits.astype(jnp.float32)

  def check_input(self, images: Array) -> tuple[int, int]:
    """The patch grid of `images` [B, H, W, 3]; ValueError when not a multiple."""
    _, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    return h // p, w // p

