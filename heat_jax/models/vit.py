"""Vision Transformer (Flax linen) with the vit_jax parameter tree.

In-memory parameter names (Linen, as vit_jax uses after `convert_pre_linen`):

  embedding/{kernel,bias}                      Conv, patch x patch, stride patch
  cls                                          [1, 1, D]            (classifier='token')
  Transformer/posembed_input/pos_embedding     [1, (1+)N, D]
  Transformer/encoderblock_{i}/LayerNorm_0
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/{query,key,value,out}
  Transformer/encoderblock_{i}/LayerNorm_1
  Transformer/encoderblock_{i}/MlpBlock_0/{Dense_0,Dense_1}
  Transformer/encoder_norm
  pre_logits                                   (only with representation_size)
  head

Every name is pinned explicitly. PETL methods change the model only through
`extensions` (see `heat_jax.models.extensions`), which add subtrees with their own names.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from heat_jax.models import layers
from heat_jax.models.extensions import Extension, Hooks, Site, Tokens

Array = jax.Array


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  approximate_gelu: bool = True
  layer_norm_eps: float = 1e-6
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
        dtype=self.dtype, param_dtype=self.param_dtype,
        name="MultiHeadDotProductAttention_0")(y, gate=gate, deterministic=deterministic,
                                               hooks=hooks, site=site)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if hooks is not None:
      y = hooks.branch(self, site, "attention", x, y, deterministic)
    x = x + drop_path(y, deterministic)

    y = nn.LayerNorm(name="LayerNorm_1", **norm)(x)
    y = layers.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate,
                        approximate_gelu=self.approximate_gelu, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="MlpBlock_0")(y, deterministic)
    if hooks is not None:
      y = hooks.branch(self, site, "mlp", x, y, deterministic)
    return x + drop_path(y, deterministic)


class ViT(nn.Module):
  """Vision Transformer.

  `__call__(images, head_gates=None, train=False, return_block_tokens=False)`:
    images: [B, H, W, 3] float32, sides multiples of `patch_size`.
    head_gates: optional [num_layers, num_heads]; multiplies each head's output before
      the out projection (ones = plain model, zero removes the head exactly).
    return_block_tokens: also return a tuple with every block's output tokens.
  `extensions`: PETL extension specs (`heat_jax.models.extensions`).
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  image_size: int = 224
  classifier: str = "token"
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  approximate_gelu: bool = True
  layer_norm_eps: float = 1e-6
  head_init: str = "zeros"
  extensions: tuple[Extension, ...] = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  family = "vit"

  @property
  def heads_per_layer(self) -> tuple[int, ...]:
    return (self.num_heads,) * self.num_layers

  @nn.compact
  def __call__(self, images: Array, head_gates: Optional[Array] = None,
               train: bool = False, return_block_tokens: bool = False):
    if self.classifier not in ("token", "gap"):
      raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
    deterministic = not train
    head_gates = layers.check_gates(head_gates, (self.num_layers, self.num_heads))
    b, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    hooks = Hooks.build(self, self.extensions, self.family)
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, param_dtype=self.param_dtype, name="embedding")(
                    images.astype(self.dtype))
    grid = (h // p, w // p)
    x = x.reshape(b, -1, self.hidden_size)
    if self.classifier == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size),
                       self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
    num_prefix = 1 if self.classifier == "token" else 0

    x, block_tokens = Encoder(
        num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        drop_path_rate=self.drop_path_rate, approximate_gelu=self.approximate_gelu,
        layer_norm_eps=self.layer_norm_eps, num_prefix=num_prefix, dtype=self.dtype,
        param_dtype=self.param_dtype, name="Transformer")(
            x, head_gates, deterministic, hooks)

    if self.classifier == "token":
      x = x[:, 0]
    else:  # the patch tokens are the last ones, after any extension tokens
      x = jnp.mean(x[:, -grid[0] * grid[1]:], axis=1)
    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="pre_logits")(x)
      x = jnp.tanh(x)
    logits = hooks.head(self, x, Tokens(block_tokens, num_prefix, (grid,) * self.num_layers,
                                        images.astype(self.dtype)),
                        self.num_classes, train)
    if logits is None:
      head_init = (nn.initializers.zeros if self.head_init == "zeros"
                   else nn.initializers.lecun_normal())
      logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="head")(x)
    logits = logits.astype(jnp.float32)
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
  layer_norm_eps: float = 1e-6
  num_prefix: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, head_gates: Optional[Array], deterministic: bool,
               hooks: Hooks) -> tuple[Array, tuple[Array, ...]]:
    """Returns the normalised final tokens and every block's (unnormalised) output."""
    d = x.shape[-1]
    pos = PositionEmbedding(self.param_dtype, name="posembed_input")(x)
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    rates = layers.drop_path_rates(self.drop_path_rate, self.num_layers)
    block_tokens = []
    for i in range(self.num_layers):
      site = Site(layer=i, num_heads=self.num_heads, head_dim=d // self.num_heads, width=d,
                  family="vit", num_layers=self.num_layers)
      x = hooks.tokens(self, site, x, self.num_prefix, deterministic)
      x = EncoderBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, drop_path_rate=rates[i],
          approximate_gelu=self.approximate_gelu, layer_norm_eps=self.layer_norm_eps,
          dtype=self.dtype, param_dtype=self.param_dtype, name=f"encoderblock_{i}")(
              x, None if head_gates is None else head_gates[i], deterministic, hooks, site)
      block_tokens.append(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="encoder_norm")(x)
    return x, tuple(block_tokens)


class PositionEmbedding(nn.Module):
  """Learned absolute position embedding `pos_embedding` [1, tokens, D]."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (1, x.shape[1], x.shape[2])
    return self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape,
                      self.param_dtype)
