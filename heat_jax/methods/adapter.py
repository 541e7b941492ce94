"""Bottleneck adapters: AdaptFormer (parallel to the MLP) or Houlsby (serial, two per block).

`parallel`: y_mlp + adapter(x), x the MLP sub-block's residual input (`adapter`).
`serial`: y + adapter(y) after the attention (`adapter_attn`) and after the MLP
(`adapter_mlp`). The up-projection is zero-initialised, so the model is unchanged at
step 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models.extensions import Extension, Site, register_extension
from heat_jax.training import partition

Array = jax.Array
STYLES = ("parallel", "serial")


class Adapter(nn.Module):
  """Bottleneck adapter: scale * up(relu(down(x))), `up` zero-initialised."""

  dim: int
  scale: float = 1.0
  use_bias: bool = True
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    h = nn.Dense(self.dim, use_bias=self.use_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype,
                 kernel_init=nn.initializers.he_uniform(), name="down")(x)
    h = nn.relu(h)
    if self.dropout > 0:
      h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.Dense(x.shape[-1], use_bias=self.use_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros,
                 name="up")(h)
    return h * self.scale


@register_extension
@dataclasses.dataclass(frozen=True)
class AdapterSpec(Extension):
  """Bottleneck adapters: `parallel` (AdaptFormer, beside the MLP) or `serial` (Houlsby)."""

  dim: int = 8
  style: str = "parallel"
  scale: float = 1.0
  use_bias: bool = True
  dropout: float = 0.0

  kind = "adapter"
  param_names = ("adapter", "adapter_attn", "adapter_mlp")

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"unknown adapter style {self.style!r}; use parallel or serial")

  def branch(self, host: nn.Module, site: Site, part: str, x: Array, y: Array, *,
             shared: Any, deterministic: bool) -> Array:
    def adapter(name: str) -> Adapter:
      return Adapter(self.dim, self.scale, self.use_bias, self.dropout, host.dtype,
                     host.param_dtype, name=name)

    if self.style == "serial":
      return y + adapter(f"adapter_{'attn' if part == 'attention' else 'mlp'}")(
          y, deterministic)
    if part == "mlp":
      return y + adapter("adapter")(x, deterministic)
    return y


@register_method
class AdapterMethod(Method):
  name = "adapter"
  rank_field = "adapter.dim"

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    c = ml_collections.ConfigDict()
    c.dim = 8
    c.style = "parallel"                # parallel (AdaptFormer) | serial (Houlsby)
    c.scale = 1.0
    c.use_bias = True
    c.dropout = 0.0
    return {"adapter": c}

  def extensions(self) -> tuple[Extension, ...]:
    a = self.config.adapter
    if a.style not in STYLES:
      raise ConfigError(f"config.adapter.style={a.style!r} is not parallel or serial")
    if a.dim < 1:
      raise ConfigError(f"config.adapter.dim must be >= 1, got {a.dim}")
    return (AdapterSpec(dim=int(a.dim), style=a.style, scale=float(a.scale),
                        use_bias=bool(a.use_bias), dropout=float(a.dropout)),)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(
        ctx.params, lambda k, _: any(p.startswith("adapter") for p in k.split("/")))
    return self.with_head(ctx.params, mask)
