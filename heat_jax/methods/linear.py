"""Linear probe: only the classifier head trains."""

from heat_jax.methods.base import Method, register_method


@register_method
class Linear(Method):
  name = "linear"
