"""Models: `create_model(name, num_classes, **overrides)` and `head_layout(model)`."""

import importlib
import importlib.util

from heat_jax.models.registry import (HeadLayout, available_models, create_model,
                                      head_layout, model_defaults, register_model)
from heat_jax.models import vit_configs  # noqa: F401  (registers the ViT names)

if importlib.util.find_spec("heat_jax.models.swin_configs") is not None:
  importlib.import_module("heat_jax.models.swin_configs")  # registers the Swin names

__all__ = ["HeadLayout", "available_models", "create_model", "head_layout",
           "model_defaults", "register_model"]
