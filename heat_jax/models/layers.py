"""Building blocks shared by ViT and Swin.

The attention keeps the head axis explicit in its parameters, exactly as the public
vit_jax checkpoints store them:

  query/key/value: kernel [hidden, heads, head_dim], bias [heads, head_dim]
  out:             kernel [heads, head_dim, hidden], bias [hidden]

so per-head gates, Taylor scores, masks and LoRA index one axis without reshaping.
Every submodule is named explicitly: adding a module can never renumber another.
PETL methods change these blocks only through `heat_jax.models.extensions` hooks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from heat_jax.models.extensions import Hooks, Site

Array = jax.Array
Dtype = Any

class MultiHeadAttention(nn.Module):
  """Multi-head attention with the explicit per-head parameter layout.

  Attributes:
    num_heads: number of heads.
    out_features: width of the output (defaults to the input width).
    attention_dropout: dropout on the attention probabilities.
  """

  num_heads: int
  out_features: Optional[int] = None
  attention_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x: Array, *, gate: Optional[Array] = None,
               attention_bias: Optional[Array] = None,
               deterministic: bool = True, hooks: Optional[Hooks] = None,
               site: Optional[Site] = None) -> Array:
    """Self-attention over x [..., tokens, width].

    Args:
      gate: optional [heads] multiplier of each head's output before `out`.
      attention_bias: optional additive bias broadcastable to [..., heads, q, k]
        (Swin's relative position bias and shift mask).
      hooks, site: extensions' `project` hook runs after each of query/key/value.
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
      if hooks is None or site is None:
        return y
      return hooks.project(self, site, name, x, y, deterministic)

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
