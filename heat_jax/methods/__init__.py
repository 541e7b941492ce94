"""PETL methods, one module each, behind a registry (`config.method.name`).

Every module of this package is imported here, so adding a method is adding one file
whose class is decorated with `@register_method`.
"""

import importlib
import pkgutil

from heat_jax.methods.base import (Method, MethodContext, available_methods, get_method,
                                   method_class, method_config_blocks, register_method)

for _module in pkgutil.iter_modules(__path__):
  if _module.name != "base":
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodContext", "available_methods", "get_method",
           "method_class", "method_config_blocks", "register_method"]
