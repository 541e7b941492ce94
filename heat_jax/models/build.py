"""Model building and the checks of config.model: `build_model` and `check_model_config`.

Both read the model's registered `Family` record (which config fields the module
takes, which position-embedding methods its checkpoints accept) and the module's own
geometry; neither knows a family by name.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Any

import jax.numpy as jnp
import ml_collections

from heat_jax import checkpoints, model_spec
from heat_jax.errors import CheckpointError, ConfigError
from heat_jax.models import create_model, model_info


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                extensions: tuple = ()) -> tuple[Any, dict]:
  """The linen module for `config.model` with the method's extensions (then the task
  kind's, e.g. a segmentation decoder), and its spec."""
  from heat_jax.tasks import get_task_kind   # noqa: PLC0415 (tasks import models)
  extensions = tuple(extensions) + get_task_kind(
      config.get("task_kind", "classification"), config).extensions()
  fields = {"image_size": config.model.image_size,
            "drop_path_rate": config.model.drop_path_rate}
  for name in model_info(config.model.name).config_fields:   # e.g. vit_jax's classifier
    fields[name] = config.model[name]
  model = create_model(config.model.name, num_classes, extensions=tuple(extensions),
                       **fields, **({"dtype": jnp.bfloat16} if config.train.bf16 else {}))
  return model, model_spec.spec_of(config.model.name, num_classes, fields, extensions)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model_config(config: ml_collections.ConfigDict) -> None:
  """config.model against the named model's geometry (no weights are read)."""
  m = config.model
  info = model_info(m.name)                # ConfigError for an unknown name
  size = m.image_size
  if not _is_int(size) or size < 1:
    raise ConfigError(f"config.model.image_size must be a positive integer, got {size!r}")
  patch = int(create_model(m.name, 1).patch_size)
  if size % patch:
    near = max(patch, round(size / patch) * patch)
    raise ConfigError(f"config.model.image_size={size} is not a multiple of {m.name}'s "
                      f"patch size {patch}; use e.g. {near}")
  if not 0 <= m.drop_path_rate < 1:
    raise ConfigError(f"config.model.drop_path_rate must be in [0, 1), got {m.drop_path_rate}")
  if "classifier" in info.config_fields and m.classifier not in ("token", "gap"):
    raise ConfigError(f"config.model.classifier={m.classifier!r} is not token or gap")
  methods = checkpoints.interpolations(info.name)
  if methods and m.posemb_interpolation not in methods:
    raise ConfigError(f"config.model.posemb_interpolation={m.posemb_interpolation!r} is "
                      f"not one of {methods} ({m.name})")
  pretrained = str(m.pretrained or "")
  if pretrained and not (os.path.isfile(pretrained) or re.match(r"(https?|gs)://", pretrained)
                         or checkpoints.get_checkpoint(pretrained) is not None
                         or pretrained.startswith(checkpoints.HF_HUB)):
    if os.path.isdir(pretrained):
      raise CheckpointError(f"config.model.pretrained={pretrained} is a directory; pass the "
                            "checkpoint file in it (.npz, .safetensors, .pth)")
    checkpoints.resolve_checkpoint(pretrained)   # raises the not-found / unknown-name line
