"""Visual prompt tuning (shallow or deep prompts) + the head.

Shallow: `num_tokens` learnable tokens enter after the class token at the first
block's input (after the position embedding) and flow through every block. Deep: a
fresh set replaces the previous block's prompt outputs before every block. The
prompts are one parameter `vpt_prompts` [sets, num_tokens, width] (ViT only).
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
from heat_jax.models import model_architecture
from heat_jax.models.extensions import Extension, Site, register_extension
from heat_jax.training import partition

Array = jax.Array
MODES = ("shallow", "deep")


@register_extension
@dataclasses.dataclass(frozen=True)
class VptSpec(Extension):
  """Visual prompt tuning: `num_tokens` prompts, `shallow` (input only) or `deep`."""

  num_tokens: int = 10
  mode: str = "shallow"

  kind = "vpt"
  param_names = ("vpt_prompts",)
  families = ("vit",)

  def shared(self, host: nn.Module) -> Array:
    if self.mode not in MODES:
      raise ValueError(f"vpt mode must be shallow or deep, got {self.mode!r}")
    sets = host.num_layers if self.mode == "deep" else 1
    init = nn.initializers.xavier_uniform(in_axis=-1, out_axis=-2, batch_axis=(0,))
    return host.param("vpt_prompts", init, (sets, self.num_tokens, host.hidden_size),
                      host.param_dtype)

  def tokens(self, host: nn.Module, site: Site, x: Array, start: int, *, shared: Any,
             deterministic: bool) -> Array:
    if site.layer > 0 and self.mode == "shallow":
      return x
    prompts = shared[site.layer if self.mode == "deep" else 0]
    p = jnp.broadcast_to(prompts.astype(x.dtype), (x.shape[0], *prompts.shape))
    rest = start if site.layer == 0 else start + self.num_tokens  # deep: replace
    return jnp.concatenate([x[:, :start], p, x[:, rest:]], axis=1)


@register_method
class Vpt(Method):
  name = "vpt"

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    c = ml_collections.ConfigDict()
    c.num_tokens = 10
    c.mode = "shallow"                  # shallow | deep
    return {"vpt": c}

  def extensions(self) -> tuple[Extension, ...]:
    v = self.config.vpt
    if v.mode not in MODES:
      raise ConfigError(f"config.vpt.mode={v.mode!r} is not shallow or deep")
    if v.num_tokens < 1:
      raise ConfigError(f"config.vpt.num_tokens must be >= 1, got {v.num_tokens}")
    if model_architecture(self.config.model.name) not in VptSpec.families:
      raise ConfigError("vpt is not supported on Swin (prompts fit shifted windows "
                        "poorly); use lora or adapter")
    return (VptSpec(num_tokens=int(v.num_tokens), mode=v.mode),)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: "vpt_prompts" in k)
    return self.with_head(ctx.params, mask)
