"""Bottleneck adapters: AdaptFormer (parallel to the MLP) or Houlsby (serial)."""

from __future__ import annotations

from typing import Any

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models.layers import AdapterSpec
from heat_jax.training import partition


@register_method
class Adapter(Method):
  name = "adapter"
  mergeable = False

  def model_overrides(self) -> dict[str, Any]:
    a = self.config.adapter
    if a.style not in ("parallel", "serial"):
      raise ConfigError(f"config.adapter.style={a.style!r} is not parallel or serial")
    if a.dim < 1:
      raise ConfigError(f"config.adapter.dim must be >= 1, got {a.dim}")
    return {"adapter": AdapterSpec(dim=int(a.dim), style=a.style, scale=float(a.scale),
                                   use_bias=bool(a.use_bias), dropout=float(a.dropout))}

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(
        ctx.params, lambda k, _: any(p.startswith("adapter") for p in k.split("/")))
    return self.with_head(ctx.params, mask)
