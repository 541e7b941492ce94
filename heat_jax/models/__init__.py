"""Models: `create_model(name, num_classes, **overrides)` and `head_layout(model)`."""

from heat_jax.models.backbone import Backbone, Family
from heat_jax.models.registry import (HeadLayout, available_models, create_model,
                                      head_layout, model_architecture, model_defaults,
                                      model_family, model_info, register_model)
# Importing a *_configs module registers its named models.
from heat_jax.models import swin_configs, timm_vit_configs, vit_configs  # noqa: F401,E402

__all__ = ["Backbone", "Family", "HeadLayout", "available_models", "create_model",
           "head_layout", "model_architecture", "model_defaults", "model_family",
           "model_info", "register_model"]
