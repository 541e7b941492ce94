"""Building blocks shared by ViT and Swin.

The attention keeps the head axis explicit in its parameters, exactly as the public
vit_jax checkpoints store them:

  query/key/value: kernel [hidden, heads, head_dim], bias [heads, head_dim]
  out:             kernel [heads, head_dim, hidden], bias [hidden]

so per-head gates, Taylor scores, masks and LoRA index one axis without reshaping.
Every submodule is named explicitly: adding a module can never renumber another.
PETL methods change these blocks only through `heat_jax.models.extensions` hooks.

A projection kernel may arrive as a `head_split.HeadSplit` (the training engine's form
when only some heads train): the projections then compute frozen and trained heads as
separate matmuls, and when query, key, value and out are split by the same heads the
attention runs per head group, so nothing is gathered or interleaved.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from heat_jax.models import head_split
from heat_jax.models.extensions import Extension, Hooks, Site
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
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Union[Array, tuple[Array, Array]], grouped: bool = False) -> Any:
    """y = x . kernel + bias.

    Args:
      x: the input, or a (frozen heads, trained heads) pair of inputs when the heads
        are contracted (the out projection after grouped attention); needs a kernel
        split along `head_axis`.
      grouped: with a kernel split along an output head axis, return the outputs of
        the frozen and the trained heads as a pair instead of interleaving them.
    """
    pair = isinstance(x, tuple)
    in_shape = list((x[0] if pair else x).shape[-self.num_in:])
    if pair:
      in_shape[self.head_axis] += x[1].shape[x[1].ndim - self.num_in + self.head_axis]
    shape = tuple(in_shape) + tuple(self.features)
    kernel = self._kernel(shape, int(np.prod(in_shape)))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, tuple(self.features), self.param_dtype)
      bias = bias.astype(self.dtype)
    else:  # timm's qkv_bias=False: a constant zero (no parameter)
      bias = jnp.zeros(tuple(self.features), self.dtype)
    split = isinstance(kernel, HeadSplit) and kernel.axis == self.head_axis
    if pair:
      if not split:
        raise ValueError(f"{self.name}: a grouped input needs a kernel split by heads")
      return self._contract_groups(x, kernel) + bias
    x = x.astype(self.dtype)
    if not split:
      if isinstance(kernel, HeadSplit):
        kernel = kernel.merged()
      return self._dense(x, kernel) + bias
    if kernel.axis < self.num_in:   # heads are contracted (out)
      axis = x.ndim - self.num_in + kernel.axis
      pair = (head_split.take(x, kernel.rest, axis), head_split.take(x, kernel.idx, axis))
      return self._contract_groups(pair, kernel) + bias
    # Heads are output features (query/key/value): one matmul per group.
    axis = kernel.axis - self.num_in   # of the bias and of y's trailing feature axes
    y_rest = self._dense(x, head_split.take(kernel.full, kernel.rest, kernel.axis))
    y_rest = y_rest + head_split.take(bias, kernel.rest, axis)
    y_part = self._dense(x, kernel.part) + head_split.take(bias, kernel.idx, axis)
    if grouped:
      return y_rest, y_part
    axis += x.ndim - self.num_in
    return head_split.interleave(y_rest, kernel.rest, y_part, kernel.idx, axis=axis)

  def _contract_groups(self, pair: tuple[Array, Array], kernel: HeadSplit) -> Array:
    x_rest, x_part = (v.astype(self.dtype) for v in pair)
    y = self._dense(x_part, kernel.part)
    if kernel.rest:
      y = y + self._dense(x_rest, head_split.take(kernel.full, kernel.rest, kernel.axis))
    return y

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
  qkv_bias: bool = True

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
    qkv = lambda name: Projection((self.num_heads, head_dim), num_in=1, head_axis=1,
                                  use_bias=self.qkv_bias, name=name, **dense)
    out = Projection((out_features,), num_in=2, head_axis=0, name="out", **dense)
    dropout = self.attention_dropout > 0 and not deterministic
    groups = None if dropout else self._head_groups(hooks)
    if groups is not None:
      # Selected heads trained in split form: attend within each group of heads
      # (frozen, trained), so no projection output is ever interleaved back.
      q, k, v = (qkv(name)(x, grouped=True) for name in ("query", "key", "value"))
      heads = []
      for g, members in enumerate(groups):
        bias = attention_bias
        if bias is not None and bias.shape[-3] > 1:
          bias = head_split.take(bias, members, bias.ndim - 3)
        h = self._attend(q[g], k[g], v[g], bias, head_dim, deterministic)
        if gate is not None:
          h = h * head_split.take(gate, members, 0).astype(h.dtype)[:, None]
        heads.append(h)
      return out(tuple(heads))

    def proj(name: str) -> Array:
      y = qkv(name)(x)
      if hooks is None or site is None:
        return y
      return hooks.project(self, site, name, x, y, deterministic)

    q, k, v = proj("query"), proj("key"), proj("value")
    heads = self._attend(q, k, v, attention_bias, head_dim, deterministic)
    if gate is not None:
      heads = heads * gate.astype(heads.dtype)[:, None]
    return out(heads)

  def _head_groups(self, hooks: Optional[Hooks]) -> Optional[tuple[tuple[int, ...], ...]]:
    """(frozen heads, trained heads) when query, key, value and out all arrive split by
    the same heads and no extension rewrites the projections; else None."""
    if self.is_initializing() or not self.has_variable("params", "query"):
      return None
    params = self.variables["params"]
    kernels = [params[n].get("kernel") for n in ("query", "key", "value", "out")]
    if not all(isinstance(kn, HeadSplit) and kn.axis == a
               for kn, a in zip(kernels, (1, 1, 1, 0))):
      return None
    if len({kn.idx for kn in kernels}) != 1 or not kernels[0].rest:
      return None
    if hooks is not None and any(type(e).project is not Extension.project
                                 for e in hooks.extensions):
      return None
    return kernels[0].rest, kernels[0].idx

  def _attend(self, q: Array, k: Array, v: Array, attention_bias: Optional[Array],
              head_dim: int, deterministic: bool) -> Array:
    if self.fused and not (self.attention_dropout > 0 and not deterministic):
      return fused_attention(q, k, v, attention_bias, scale=head_dim ** -0.5)
    return self._explicit(q, k, v, attention_bias, head_dim, deterministic)

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


ACTIVATIONS = ("gelu", "quick_gelu")


def quick_gelu(x: Array) -> Array:
  """x * sigmoid(1.702 x): OpenAI CLIP's activation (timm `quick_gelu`)."""
  return x * jax.nn.sigmoid(1.702 * x)


class MlpBlock(nn.Module):
  """Dense -> activation -> dropout -> Dense -> dropout (names Dense_0 / Dense_1 pinned).

  `activation`: `gelu` (tanh-approximate when `approximate_gelu`, as vit_jax; exact
  as torch) or `quick_gelu` (OpenAI CLIP).
  """

  mlp_dim: int
  out_dim: Optional[int] = None
  dropout_rate: float = 0.0
  approximate_gelu: bool = True
  activation: str = "gelu"
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
    if self.activation == "quick_gelu":
      x = quick_gelu(x)
    elif self.activation == "gelu":
      x = nn.gelu(x, approximate=self.approximate_gelu)
    else:
      raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
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
