"""Full fine-tuning: every parameter trains."""

from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.training import partition


@register_method
class Full(Method):
  name = "full"

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    return partition.mask_from_predicate(ctx.params, lambda k, v: True)
