"""Visual prompt tuning (shallow or deep prompts) + the head."""

from __future__ import annotations

from typing import Any

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models import model_family
from heat_jax.models.vit import VptSpec
from heat_jax.training import partition


@register_method
class Vpt(Method):
  name = "vpt"
  mergeable = False

  def model_overrides(self) -> dict[str, Any]:
    v = self.config.vpt
    if v.mode not in ("shallow", "deep"):
      raise ConfigError(f"config.vpt.mode={v.mode!r} is not shallow or deep")
    if v.num_tokens < 1:
      raise ConfigError(f"config.vpt.num_tokens must be >= 1, got {v.num_tokens}")
    if model_family(self.config.model.name) == "swin":
      raise ConfigError("vpt is not supported on Swin (prompts fit shifted windows "
                        "poorly); use lora or adapter")
    return {"vpt": VptSpec(num_tokens=int(v.num_tokens), mode=v.mode)}

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: "vpt_prompts" in k)
    return self.with_head(ctx.params, mask)
