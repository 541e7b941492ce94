"""PETL methods, one module each, behind a registry (`config.method.name`)."""

from heat_jax.methods.base import (Method, MethodContext, available_methods, get_method,
                                   register_method)
from heat_jax.methods import adapter, bitfit, full, heat, linear, lora, vpt  # noqa: F401

__all__ = ["Method", "MethodContext", "available_methods", "get_method", "register_method"]
