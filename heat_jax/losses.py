"""Losses shared by training, evaluation and importance scoring."""

import jax
import jax.numpy as jnp
import optax


def masked_cross_entropy(logits: jax.Array, labels: jax.Array,
                         mask: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over rows with mask 1 (padding rows excluded)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels.astype(jnp.int32))
  if mask is None:
    return losses.mean()
  mask = mask.astype(jnp.float32)
  return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)
