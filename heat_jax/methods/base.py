"""What a PETL method is: model extensions + a declaration of what is trainable.

A method is one module that defines a `Method` subclass and registers it with
`@register_method`. The engine asks it for
  * `model_overrides()`: fields passed to `create_model` (LoRA, adapters, prompts);
  * `trainable_mask(ctx)`: a flat mask (see `heat_jax.training.partition`) over the
    loaded parameters; the classifier head is always trainable.
Methods never rename or renumber pretrained parameters: extensions live in their own
explicitly named subtrees, so pretrained checkpoints always load.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import ml_collections

from heat_jax.data.base import Task
from heat_jax.errors import ConfigError
from heat_jax.training import partition

_METHODS: dict[str, type["Method"]] = {}


@dataclasses.dataclass
class MethodContext:
  """What a method may look at when deciding what to train."""

  config: ml_collections.ConfigDict
  model: nn.Module
  params: dict[str, Any]
  task: Optional[Task] = None
  workdir: Optional[str] = None


class Method:
  """Base class: trains the classifier head only (a linear probe)."""

  name = "base"
  # Whether the trained model can be exported as a plain ViT checkpoint.
  mergeable = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info: dict[str, Any] = {}

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    return partition.mask_from_predicate(ctx.params, lambda k, _: partition.is_head(k))

  def with_head(self, params: dict, mask: partition.FlatMask) -> partition.FlatMask:
    """Adds the classifier head to a mask."""
    head = partition.mask_from_predicate(params, lambda k, _: partition.is_head(k))
    return partition.union(mask, head)


def register_method(cls: type[Method]) -> type[Method]:
  """Class decorator: makes `cls` available as `config.method.name == cls.name`."""
  if cls.name in _METHODS:
    raise ValueError(f"method {cls.name!r} registered twice")
  _METHODS[cls.name] = cls
  return cls


def available_methods() -> list[str]:
  return sorted(_METHODS)


def get_method(config: ml_collections.ConfigDict) -> Method:
  name = config.method.name
  if name not in _METHODS:
    raise ConfigError(f"config.method.name={name!r} is not one of {available_methods()}")
  return _METHODS[name](config)
