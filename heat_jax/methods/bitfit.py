"""BitFit: every `bias` leaf (LayerNorm biases included, scales excluded) + the head."""

from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.training import partition


@register_method
class BitFit(Method):
  name = "bitfit"

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: k.endswith("/bias"))
    return self.with_head(ctx.params, mask)
