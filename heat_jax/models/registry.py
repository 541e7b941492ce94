"""Registry of named model configurations.

A model file registers its named configurations with `register_model` (the module,
its default fields and its `Family` record); everything else builds models through
`create_model(name, num_classes, **overrides)` and asks `model_info(name)` about the
checkpoint format and preprocessing, never switching on a family name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from heat_jax.errors import ConfigError
from heat_jax.models.backbone import Family

_MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}
_FAMILIES: dict[str, Family] = {}


def register_model(name: str, constructor: Callable[..., nn.Module], *,
                   family: Family | None = None, **defaults: Any) -> None:
  """Registers `name` -> constructor with default keyword arguments and its record.

  `family` defaults to a record named after the module's architecture (`vit`, `swin`).
  """
  if name in _MODELS:
    raise ValueError(f"model {name!r} registered twice")
  family = family or Family(getattr(constructor, "family", "vit"))
  if "checkpoint_format" in {f.name for f in dataclasses.fields(constructor)}:
    defaults = {"checkpoint_format": family.name, **defaults}
  _MODELS[name] = (constructor, defaults)
  _FAMILIES[name] = family


def available_models() -> list[str]:
  return sorted(_MODELS)


def model_defaults(name: str) -> dict[str, Any]:
  """The registered keyword arguments of a named model."""
  _check_name(name)
  return dict(_MODELS[name][1])


def model_info(name: str) -> Family:
  """The registered record of a model: checkpoint format, preprocessing, config fields."""
  _check_name(name)
  return _FAMILIES[name]


def model_family(name: str) -> str:
  """The checkpoint-format family of a registered name ('vit', 'timm_vit', 'swin', ...):
  the key of its converter and exporter; nothing is built."""
  return model_info(name).name


def model_architecture(name: str) -> str:
  """The architecture extensions declare support for ('vit', 'swin'), not built."""
  _check_name(name)
  return getattr(_MODELS[name][0], "family", "vit")


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the linen module for a named configuration.

  Args:
    name: a registered name such as `ViT-B_16` or `Swin-B`.
    num_classes: size of the classifier head.
    **overrides: any field of the module (image_size, drop_path_rate, extensions, ...).
  """
  _check_name(name)
  constructor, defaults = _MODELS[name]
  kwargs = {**defaults, **overrides}
  fields = {f.name for f in dataclasses.fields(constructor)}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f"model {name}: unknown option(s) {unknown}; valid: "
                      f"{sorted(fields - {'parent', 'name'})}")
  return constructor(num_classes=num_classes, **kwargs)


@dataclasses.dataclass(frozen=True)
class HeadLayout:
  """Where the attention heads are: one row per attention layer (block)."""

  heads_per_layer: tuple[int, ...]

  @property
  def num_layers(self) -> int:
    return len(self.heads_per_layer)

  @property
  def max_heads(self) -> int:
    return max(self.heads_per_layer)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.num_layers, self.max_heads)

  @property
  def total_heads(self) -> int:
    return int(sum(self.heads_per_layer))

  @property
  def valid(self) -> np.ndarray:
    """Bool [layers, max_heads]: True where a head exists (ragged for Swin)."""
    mask = np.zeros(self.shape, bool)
    for i, n in enumerate(self.heads_per_layer):
      mask[i, :n] = True
    return mask


def head_layout(model: nn.Module) -> HeadLayout:
  """The head layout (layers x heads) of a ViT or Swin module."""
  return HeadLayout(tuple(int(h) for h in model.heads_per_layer))


def _check_name(name: str) -> None:
  if name not in _MODELS:
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(available_models())}")
