"""Building blocks shared by ViT and Swin.

The attention keeps the head axis explicit in its parameters, exactly as the public
vit_jax checkpoints store them:

  query/key/value: kernel [hidden, heads, head_dim], bias [heads, head_dim]
  out:             kernel [heads, head_dim, hidden], bias [hidden]

so per-head gates, Taylor scores, masks and LoRA index one axis without reshaping.
Every submodule is named explicitly: adding a module can never renumber another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Names of parameter sub-trees that PETL methods add to a pretrained model. Loading a
# checkpoint initialises these fresh instead of reporting them as missing.
EXTENSION_NAMES = ("lora_query", "lora_key", "lora_value", "lora_out", "adapter",
                   "adapter_attn", "adapter_mlp", "vpt_prompts", "kadapt", "side")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """LoRA on attention projections: delta = (alpha / rank) * B(A(dropout(x)))."""

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("query", "value")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """Bottleneck adapters: `parallel` (AdaptFormer, beside the MLP) or `serial` (Houlsby)."""

  dim: int = 8
  style: str = "parallel"
  scale: float = 1.0
  use_bias: bool = True
  dropout: float = 0.0

  def __post_init__(self):
    if self.style not in ("parallel", "serial"):
      raise ValueError(f"unknown adapter style {self.style!r}; use parallel or serial")


class LoraDelta(nn.Module):
  """Low-rank update in the per-head layout: a [in, rank], b [rank, heads, head_dim].

  `b` is zero-initialised so the model is unchanged at step 0. Head h owns b[:, h, :],
  so masking LoRA per head (Heart-LoRA) is a mask on axis 1 of `b`.
  """

  features: tuple[int, ...]
  spec: LoraSpec
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    a = self.param("a", nn.initializers.he_uniform(), (x.shape[-1], self.spec.rank),
                   self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (self.spec.rank, *self.features),
                   self.param_dtype)
    if self.spec.dropout > 0:
      x = nn.Dropout(self.spec.dropout, name="dropout")(x, deterministic=deterministic)
    h = jnp.einsum("...d,dr->...r", x, a.astype(x.dtype))
    # Contract the rank axis with b's first axis; keep b's remaining (head) axes.
    delta = jnp.tensordot(h, b.astype(x.dtype), axes=((h.ndim - 1,), (0,)))
    return delta * (self.spec.alpha / self.spec.rank)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with the explicit per-head parameter layout.

  Attributes:
    num_heads: number of heads.
    out_features: width of the output (defaults to the input width).
    attention_dropout: dropout on the attention probabilities.
    lora: optional LoRA spec (adds `lora_<target>` subtrees).
  """

  num_heads: int
  out_features: Optional[int] = None
  attention_dropout: float = 0.0
  lora: Optional[LoraSpec] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x: Array, *, gate: Optional[Array] = None,
               attention_bias: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Self-attention over x [..., tokens, width].

    Args:
      gate: optional [heads] multiplier of each head's output before `out`.
      attention_bias: optional additive bias broadcastable to [..., heads, q, k]
        (Swin's relative position bias and shift mask).
    """
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    out_features = self.out_features or width

    def proj(name: str) -> Array:
      y = nn.DenseGeneral((self.num_heads, head_dim), axis=-1, dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                          name=name)(x)
      if self.lora is not None and name in self.lora.targets:
        y = y + LoraDelta((self.num_heads, head_dim), self.lora, self.param_dtype,
                          name=f"lora_{name}")(x, deterministic)
      return y

    q, k, v = proj("query"), proj("key"), proj("value")
    q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(jnp.float32)
    if attention_bias is not None:
      logits = logits + attention_bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if self.attention_dropout > 0:
      probs = nn.Dropout(self.attention_dropout, name="attention_dropout")(
          probs, deterministic=deterministic)
    heads = jnp.einsum("...hqk,...khd->...qhd", probs, v)
    if gate is not None:
      heads = heads * gate.astype(heads.dtype)[:, None]
    return nn.DenseGeneral(out_features, axis=(-2, -1), dtype=self.dtype,
                           param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                           name="out")(heads)


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense -> dropout (names Dense_0 / Dense_1 pinned)."""

  mlp_dim: int
  out_dim: Optional[int] = None
  dropout_rate: float = 0.0
  approximate_gelu: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dense_names: tuple[str, str] = ("Dense_0", "Dense_1")

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    out_dim = self.out_dim or x.shape[-1]
    init = dict(kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.normal(stddev=1e-6))
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=self.dense_names[0], **init)(x)
    x = nn.gelu(x, approximate=self.approximate_gelu)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=self.dense_names[1], **init)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class Adapter(nn.Module):
  """Bottleneck adapter: scale * up(relu(down(x))), `up` zero-initialised."""

  spec: AdapterSpec
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    h = nn.Dense(self.spec.dim, use_bias=self.spec.use_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype,
                 kernel_init=nn.initializers.he_uniform(), name="down")(x)
    h = nn.relu(h)
    if self.spec.dropout > 0:
      h = nn.Dropout(self.spec.dropout)(h, deterministic=deterministic)
    h = nn.Dense(x.shape[-1], use_bias=self.spec.use_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros,
                 name="up")(h)
    return h * self.spec.scale


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example (rng 'dropout')."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if self.rate == 0.0 or deterministic:
      return x
    return nn.Dropout(self.rate, broadcast_dims=tuple(range(1, x.ndim)))(
        x, deterministic=False)


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Linearly increasing drop-path rates over `depth` blocks (as timm and big_vision)."""
  if depth <= 1:
    return [rate] * depth
  return [rate * i / (depth - 1) for i in range(depth)]


def gates_or_ones(head_gates: Optional[Array], shape: Sequence[int]) -> Optional[Array]:
  """Validates a `[layers, heads]` gate array; None stays None (plain model)."""
  if head_gates is None:
    return None
  head_gates = jnp.asarray(head_gates)
  if head_gates.shape != tuple(shape):
    raise ValueError(f"head_gates must have shape {tuple(shape)}, got {head_gates.shape}")
  return head_gates
