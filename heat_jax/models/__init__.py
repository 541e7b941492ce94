"""Models: `create_model(name, num_classes, **overrides)` and `head_layout(model)`.

Every `*_configs` module of this package is imported here (as methods are), so adding
a backbone is adding its module and a `*_configs` file of `register_model` calls.
"""

import importlib
import pkgutil

from heat_jax.models.backbone import Backbone, Family
from heat_jax.models.registry import (HeadLayout, available_models, create_model,
                                      head_layout, model_architecture, model_defaults,
                                      model_family, model_info, named_head_layout,
                                      register_model)

for _module in pkgutil.iter_modules(__path__):
  if _module.name.endswith("_configs"):   # registers its named models
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Backbone", "Family", "HeadLayout", "available_models", "create_model",
           "head_layout", "model_architecture", "model_defaults", "model_family",
           "model_info", "named_head_layout", "register_model"]
