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
import numpy as np

from heat_jax.models import head_split
from heat_jax.models.extensions import Hooks, Site
from heat_jax.models.head_split import HeadSplit

Array = jax.Array
Dtype = Any

class Projection(nn.Module):
  """`nn.DenseGeneral` over the last `num_in` input axes: the same parameter names,
  shapes, initialisation and numerics (`kernel` [*in, *features], `bias` [*features]).

  Its kernel may arrive as a `HeadSplit` (the training engine's form of a kernel with
  only some heads trainable); a split along `head_axis` is computed as a frozen and a
  trained matmul, so the weight gradient covers only the trained heads. A split along
  any other axis is scattered back into one kernel.

  Attributes:
    features: output feature shape.
    num_in: number of trailing input axes contracted.
    head_axis: the kernel axis of the heads (query/key/value 1, out 0).
  """

  features: tuple[int, ...]
  num_in: int = 1
  head_axis: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = tuple(x.shape[x.ndim - self.num_in:])
    shape = in_shape + tuple(self.features)
    kernel = self._kernel(shape, int(np.prod(in_shape)))
    bias = self.param("bias", self.bias_init, tuple(self.features), self.param_dtype)
    x = x.astype(self.dtype)
    if isinstance(kernel, HeadSplit) and kernel.axis == self.head_axis:
      y = self._split(x, kernel)
    else:
      if isinstance(kernel, HeadSplit):
        kernel = kernel.merged()
      y = self._dense(x, kernel)
    return y + bias.astype(self.dtype)

  def _kernel(self, shape: tuple[int, ...], fan_in: int) -> Any:
    if self.has_variable("params", "kernel"):
      value = self.get_variable("params", "kernel")
      if isinstance(value, HeadSplit):
        if value.shape != shape:
          raise ValueError(f"{self.name}: split kernel has shape {value.shape}, "
                           f"expected {shape}")
        return value

    def init(rng, shape, dtype):  # DenseGeneral's: initialise [fan_in, fan_out], reshape
      return jnp.reshape(self.kernel_init(rng, (fan_in, int(np.prod(shape)) // fan_in),
                                          dtype), shape)

    return self.param("kernel", init, shape, self.param_dtype)

  def _dense(self, x: Array, kernel: Array) -> Array:
    contract = tuple(range(x.ndim - self.num_in, x.ndim))
    return jax.lax.dot_general(x, kernel.astype(self.dtype),
                               ((contract, tuple(range(self.num_in))), ((), ())))

  def _split(self, x: Array, kernel: HeadSplit) -> Array:
    rest, idx = kernel.rest, kernel.idx
    frozen = head_split.take(kernel.full, rest, kernel.axis) if rest else None
    if kernel.axis < self.num_in:   # heads are contracted (out): sum of two matmuls
      x_axis = x.ndim - self.num_in + kernel.axis
      y = self._dense(head_split.take(x, idx, x_axis), kernel.part)
      if frozen is not None:
        y = y + self._dense(head_split.take(x, rest, x_axis), frozen)
      return y
    # Heads are output features (query/key/value): compute both groups, put them in order.
    y_axis = x.ndim - self.num_in + kernel.axis - self.num_in
    y = self._dense(x, kernel.part)
    if frozen is None:
      return y
    return head_split.interleave(self._dense(x, frozen), rest, y, idx, axis=y_axis)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with the explicit per-head parameter layout.

  Attributes:
    num_heads: number of heads.
    out_features: width of the output (defaults to the input width).
    attention_dropout: dropout on the attention probabilities.
    fused: compute softmax(q k^T + bias) v with `jax.nn.dot_product_attention`
      (implementation chosen by JAX; XLA on CPU) unless attention dropout is active;
      False keeps the explicit einsum form (the reference the fused path is tested
      against).
  """

  num_heads: int
  out_features: Optional[int] = None
  attention_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  fused: bool = True

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
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)

    def proj(name: str) -> Array:
      y = Projection((self.num_heads, head_dim), num_in=1, head_axis=1, name=name,
                     **dense)(x)
      if hooks is None or site is None:
        return y
      return hooks.project(self, site, name, x, y, deterministic)

    q, k, v = proj("query"), proj("key"), proj("value")
    dropout = self.attention_dropout > 0 and not deterministic
    if self.fused and not dropout:
      heads = fused_attention(q, k, v, attention_bias, scale=head_dim ** -0.5)
    else:
      heads = self._explicit(q, k, v, attention_bias, head_dim, deterministic)
    if gate is not None:
      heads = heads * gate.astype(heads.dtype)[:, None]
    return Projection((out_features,), num_in=2, head_axis=0, name="out", **dense)(heads)

  def _explicit(self, q: Array, k: Array, v: Array, attention_bias: Optional[Array],
                head_dim: int, deterministic: bool) -> Array:
    q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(jnp.float32)
    if attention_bias is not None:
      logits = logits + attention_bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if self.attention_dropout > 0:
      probs = nn.Dropout(self.attention_dropout, name="attention_dropout")(
          probs, deterministic=deterministic)
    return jnp.einsum("...hqk,...khd->...qhd", probs, v)


def fused_attention(q: Array, k: Array, v: Array, bias: Optional[Array], *,
                    scale: float) -> Array:
  """softmax(scale q k^T + bias) v over [..., tokens, heads, head_dim] inputs.

  `jax.nn.dot_product_attention` takes one batch axis: leading axes are flattened
  and the bias (broadcastable to [..., heads, q, k]) is broadcast to match.
  """
  lead = q.shape[:-3]
  flat = lambda t: t.reshape((-1,) + t.shape[-3:])
  if bias is not None:
    bias = jnp.broadcast_to(bias, lead + (q.shape[-2], q.shape[-3], k.shape[-3]))
    bias = bias.reshape((-1,) + bias.shape[-3:]).astype(jnp.float32)
  out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), bias=bias, scale=scale,
                                     implementation=None)
  return out.reshape(q.shape)


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
