"""Vision Transformer (Flax linen) with the vit_jax parameter tree.

In-memory parameter names (Linen, as vit_jax uses after `convert_pre_linen`):

  embedding/{kernel,bias}                      Conv, patch x patch, stride patch
  cls                                          [1, 1, D]            (class_token)
  registers                                    [1, R, D]            (num_registers > 0)
  Transformer/posembed_input/pos_embedding     [1, (prefix +) N, D] (see posemb_prefix)
  Transformer/norm_pre                         (norm_pre: CLIP)
  Transformer/encoderblock_{i}/LayerNorm_0
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/{query,key,value,out}
  Transformer/encoderblock_{i}/LayerScale_0/scale   (layer_scale: DINOv2, DeiT-3)
  Transformer/encoderblock_{i}/LayerNorm_1
  Transformer/encoderblock_{i}/MlpBlock_0/{Dense_0,Dense_1}
  Transformer/encoderblock_{i}/LayerScale_1/scale
  Transformer/encoder_norm                     (absent with fc_norm)
  fc_norm                                      (fc_norm: the final norm after pooling)
  pre_logits                                   (only with representation_size)
  head

The defaults are vit_jax's ViT; the other fields cover timm's `VisionTransformer`
family (DINOv2 with LayerScale and registers, CLIP with norm_pre and QuickGELU, DeiT,
average-pooled and class-token-free variants). Every name is pinned explicitly. PETL
methods change the model only through `extensions` (see `heat_jax.models.extensions`),
which add subtrees with their own names.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from heat_jax.models import layers
from heat_jax.models.backbone import Backbone
from heat_jax.models.extensions import Hooks, Site, Tokens

Array = jax.Array
CLASSIFIERS = ("token", "gap")


class LayerScale(nn.Module):
  """x * scale, one learned factor per channel (timm `LayerScale`, HF `lambda1`)."""

  init_value: float = 1e-5
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       self.param_dtype)
    return x * scale.astype(x.dtype)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + ls(attn(LN(x))); x + ls(mlp(LN(x))).

  LayerScale (when `layer_scale` is set) scales the sub-block's output before the
  extensions' `branch` hook sees it, so an adapter's output is not scaled by it.
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  approximate_gelu: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  layer_scale: Optional[float] = None
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, gate: Optional[Array] = None,
               deterministic: bool = True, hooks: Optional[Hooks] = None,
               site: Optional[Site] = None) -> Array:
    norm = dict(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    drop_path = layers.DropPath(self.drop_path_rate)
    y = nn.LayerNorm(name="LayerNorm_0", **norm)(x)
    y = layers.MultiHeadAttention(
        num_heads=self.num_heads, attention_dropout=self.attention_dropout_rate,
        qkv_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        name="MultiHeadDotProductAttention_0")(y, gate=gate, deterministic=deterministic,
                                               hooks=hooks, site=site)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if self.layer_scale is not None:
      y = LayerScale(self.layer_scale, self.param_dtype, name="LayerScale_0")(y)
    if hooks is not None:
      y = hooks.branch(self, site, "attention", x, y, deterministic)
    x = x + drop_path(y, deterministic)

    y = nn.LayerNorm(name="LayerNorm_1", **norm)(x)
    y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate,
                        approximate_gelu=self.approximate_gelu, activation=self.activation,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        name="MlpBlock_0")(y, deterministic)
    if self.layer_scale is not None:
      y = LayerScale(self.layer_scale, self.param_dtype, name="LayerScale_1")(y)
    if hooks is not None:
      y = hooks.branch(self, site, "mlp", x, y, deterministic)
    return x + drop_path(y, deterministic)


class ViT(Backbone):
  """Vision Transformer.

  `__call__(images, head_gates=None, train=False, return_block_tokens=False)`:
    images: [B, H, W, 3] float32, sides multiples of `patch_size`.
    head_gates: optional [num_layers, num_heads]; multiplies each head's output before
      the out projection (ones = plain model, zero removes the head exactly).
    return_block_tokens: also return a tuple with every block's output tokens.
  `extensions`: PETL extension specs (`heat_jax.models.extensions`).

  Token layout: [class token, registers, extension tokens, patches]. Geometry fields
  beyond vit_jax's (timm names in brackets): `class_token` (None: iff classifier is
  'token'), `num_registers` [reg_tokens], `posemb_prefix` (the position embedding has
  rows for the class/register tokens; False = [no_embed_class]), `norm_pre`
  [pre_norm], `layer_scale` [init_values], `activation` ('gelu' | 'quick_gelu'),
  `patch_bias` (False with [pre_norm]), `qkv_bias`, `fc_norm` (final norm after the
  pooling instead of before it [fc_norm]).
  """

  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  classifier: str = "token"
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  approximate_gelu: bool = True
  layer_norm_eps: float = 1e-6
  class_token: Optional[bool] = None
  num_registers: int = 0
  posemb_prefix: bool = True
  norm_pre: bool = False
  layer_scale: Optional[float] = None
  activation: str = "gelu"
  patch_bias: bool = True
  qkv_bias: bool = True
  fc_norm: bool = False

  family = "vit"

  @property
  def heads_per_layer(self) -> tuple[int, ...]:
    return (self.num_heads,) * self.num_layers

  @property
  def widths(self) -> tuple[int, ...]:
    return (self.hidden_size,) * self.num_layers

  @property
  def has_class_token(self) -> bool:
    return self.classifier == "token" if self.class_token is None else self.class_token

  @property
  def num_prefix_tokens(self) -> int:
    return int(self.has_class_token) + self.num_registers

  @nn.compact
  def __call__(self, images: Array, head_gates: Optional[Array] = None,
               train: bool = False, return_block_tokens: bool = False):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
    if self.classifier == "token" and not self.has_class_token:
      raise ValueError("classifier='token' needs a class token (class_token=True)")
    deterministic = not train
    head_gates = layers.gates_or_ones(head_gates, (self.num_layers, self.num_heads))
    b = images.shape[0]
    grid = self.check_input(images)
    hooks = self.hooks()
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                use_bias=self.patch_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                name="embedding")(images.astype(self.dtype))
    x = x.reshape(b, -1, self.hidden_size)
    prefix = []
    if self.has_class_token:
      prefix.append(self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size),
                               self.param_dtype))
    if self.num_registers:
      prefix.append(self.param("registers", nn.initializers.normal(stddev=1e-6),
                               (1, self.num_registers, self.hidden_size), self.param_dtype))
    prefix = [jnp.tile(t.astype(x.dtype), (b, 1, 1)) for t in prefix]
    num_prefix = self.num_prefix_tokens

    x, block_tokens = Encoder(
        num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        drop_path_rate=self.drop_path_rate, approximate_gelu=self.approximate_gelu,
        activation=self.activation, layer_norm_eps=self.layer_norm_eps,
        num_prefix=num_prefix, posemb_prefix=self.posemb_prefix, norm_pre=self.norm_pre,
        layer_scale=self.layer_scale, qkv_bias=self.qkv_bias, final_norm=not self.fc_norm,
        dtype=self.dtype, param_dtype=self.param_dtype, name="Transformer")(
            x, prefix, head_gates, deterministic, hooks)

    if self.classifier == "token":
      x = x[:, 0]
    else:  # the patch tokens are the last ones, after any extension tokens
      x = jnp.mean(x[:, -grid[0] * grid[1]:], axis=1)
    if self.fc_norm:
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="fc_norm")(x)
    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="pre_logits")(x)
      x = jnp.tanh(x)
    logits = self.classify(hooks, x, Tokens(block_tokens, num_prefix,
                                            (grid,) * self.num_layers,
                                            images.astype(self.dtype)), train)
    if return_block_tokens:
      return logits, block_tokens
    return logits


class Encoder(nn.Module):
  """Position embedding + blocks + final norm (vit_jax's `Transformer` scope)."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  approximate_gelu: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  num_prefix: int = 1
  posemb_prefix: bool = True
  norm_pre: bool = False
  layer_scale: Optional[float] = None
  qkv_bias: bool = True
  final_norm: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, prefix: list[Array], head_gates: Optional[Array],
               deterministic: bool, hooks: Hooks) -> tuple[Array, tuple[Array, ...]]:
    """Returns the (normalised) final tokens and every block's (unnormalised) output.

    x: the patch tokens [B, N, D]; prefix: the class / register tokens [B, k, D].
    """
    d = x.shape[-1]
    embed = PositionEmbedding(self.param_dtype, name="posembed_input")
    if self.posemb_prefix:   # vit_jax / timm default: concatenate, then add
      x = jnp.concatenate(prefix + [x], axis=1)
      x = x + embed(x.shape).astype(x.dtype)
    else:                    # timm no_embed_class, big_vision: add, then concatenate
      x = x + embed(x.shape).astype(x.dtype)
      x = jnp.concatenate(prefix + [x], axis=1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    if self.norm_pre:
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="norm_pre")(x)

    rates = layers.drop_path_rates(self.drop_path_rate, self.num_layers)
    block_tokens = []
    for i in range(self.num_layers):
      site = Site(layer=i, num_heads=self.num_heads, head_dim=d // self.num_heads, width=d,
                  family="vit", num_layers=self.num_layers)
      x = hooks.tokens(self, site, x, self.num_prefix, deterministic)
      x = EncoderBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, drop_path_rate=rates[i],
          approximate_gelu=self.approximate_gelu, activation=self.activation,
          layer_norm_eps=self.layer_norm_eps, layer_scale=self.layer_scale,
          qkv_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype,
          name=f"encoderblock_{i}")(
              x, None if head_gates is None else head_gates[i], deterministic, hooks, site)
      block_tokens.append(x)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="encoder_norm")(x)
    return x, tuple(block_tokens)


class PositionEmbedding(nn.Module):
  """Learned absolute position embedding `pos_embedding` [1, tokens, D]."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, shape: tuple[int, ...]) -> Array:
    return self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                      (1, shape[1], shape[2]), self.param_dtype)
