"""LoRA on attention projections (q and v by default); `b` starts at zero."""

from __future__ import annotations

import re
from typing import Any

import ml_collections

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models.layers import LoraSpec
from heat_jax.training import partition

_PROJECTIONS = ("query", "key", "value", "out")


def lora_spec(lora: ml_collections.ConfigDict) -> LoraSpec:
  """LoraSpec from `config.lora`; `targets` is a comma list or a regex over
  query/key/value."""
  text = str(lora.targets).strip()
  names = [t.strip() for t in text.split(",") if t.strip()]
  if not all(n in _PROJECTIONS for n in names):
    try:
      pattern = re.compile(text)
    except re.error as e:
      raise ConfigError(f"config.lora.targets={text!r} is neither a comma list of "
                        f"{_PROJECTIONS[:3]} nor a valid regex ({e})") from None
    names = [p for p in _PROJECTIONS if pattern.fullmatch(p)]
  if "out" in names:
    raise ConfigError("config.lora.targets: LoRA on 'out' is not supported; use query, "
                      "key and/or value")
  if not names:
    raise ConfigError(f"config.lora.targets={text!r} matches no projection; use e.g. "
                      "'query,value'")
  if lora.rank < 1:
    raise ConfigError(f"config.lora.rank must be >= 1, got {lora.rank}")
  return LoraSpec(rank=int(lora.rank), alpha=float(lora.alpha), dropout=float(lora.dropout),
                  targets=tuple(names))


def is_lora(path: str) -> bool:
  return any(part.startswith("lora_") for part in path.split("/"))


@register_method
class Lora(Method):
  name = "lora"

  def model_overrides(self) -> dict[str, Any]:
    return {"lora": lora_spec(self.config.lora)}

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: is_lora(k))
    return self.with_head(ctx.params, mask)
