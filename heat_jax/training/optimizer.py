"""The optax optimizer over the trainable tree, with element-level masks.

Chain (gradient mask -> clip -> Adam -> decoupled weight decay -> learning rate):
  * the gradient mask keeps the global norm and Adam moments of masked-out elements
    clean;
  * clipping and weight decay see trainable entries only;
  * the final update mask is applied after weight decay by `apply_masked_updates`
    with `where`, so masked-out elements never move, bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from heat_jax.errors import ConfigError
from heat_jax.training import partition

WD_MASKS = ("all", "kernels", "ndim>1")


def learning_rate_schedule(optim: ml_collections.ConfigDict, *, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from `warmup_init_lr` to `lr`, then cosine decay to `min_lr`
  (`optim.schedule='poly'`: mmseg's poly decay (1 - t / T) ** poly_power to `min_lr`)."""
  warmup = min(int(round(optim.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  if optim.get("schedule", "cosine") == "poly":
    decay = optax.polynomial_schedule(optim.lr, optim.min_lr, optim.get("poly_power", 1.0),
                                      max(total_steps - warmup, 1))
    if not warmup:
      return decay
    ramp = optax.linear_schedule(optim.warmup_init_lr, optim.lr, warmup)
    return optax.join_schedules([ramp, decay], [warmup])
  if warmup == 0 and optim.lr > 0:   # the same values, without optax's 0-step warning
    return optax.cosine_decay_schedule(init_value=optim.lr, decay_steps=max(total_steps, 1),
                                       alpha=optim.min_lr / optim.lr)
  return optax.warmup_cosine_decay_schedule(
      init_value=optim.warmup_init_lr, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim.min_lr)


def weight_decay_mask(trainable: Any, rule: str) -> Any:
  """Which trainable leaves are decayed: a recipe choice (PyTorch PETL code decays every
  trainable tensor, HST those with ndim > 1, big_vision the kernels)."""
  if rule not in WD_MASKS:
    raise ConfigError(f"config.optim.wd_mask={rule!r} is not one of {WD_MASKS}")
  flat = partition.flatten(trainable)
  if rule == "all":
    out = {k: True for k in flat}
  elif rule == "kernels":
    out = {k: k.endswith("kernel") for k in flat}
  else:
    out = {k: jnp.ndim(v) > 1 for k, v in flat.items()}
  return partition.unflatten(out)


def mask_tree(tree: Any, masks: Any) -> Any:
  """`tree` with elements where the (broadcasting) 0/1 mask tree is 0 set to zero.

  Uses `where`, not a product, so a NaN/inf in a masked-out element cannot leak.
  """
  return jax.tree.map(lambda u, m: _where(m, u, jnp.zeros_like(u)), tree, masks)


def multiply_by_mask(masks: Any) -> optax.GradientTransformation:
  """Zeroes updates where a (broadcasting) 0/1 mask tree is 0; stateless."""

  def update(updates, state, params=None):
    del params
    return mask_tree(updates, masks), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(optim: ml_collections.ConfigDict, trainable: Any, masks: Any, *,
                   total_steps: int, steps_per_epoch: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW over the trainable tree with the project's masking rules."""
  schedule = learning_rate_schedule(optim, total_steps=total_steps,
                                    steps_per_epoch=steps_per_epoch)
  parts = [multiply_by_mask(masks)]
  if optim.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2))
  if optim.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim.weight_decay,
                                           weight_decay_mask(trainable, optim.wd_mask)))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule


def apply_masked_updates(params: Any, updates: Any, masks: Any) -> Any:
  """params + updates where the mask is 1; untouched (bit-identical) elsewhere."""
  return jax.tree.map(lambda p, u, m: _where(m, p + u, p).astype(p.dtype),
                      params, updates, masks)


def _where(mask: Any, on: jax.Array, off: jax.Array) -> jax.Array:
  """`on` where the 0/1 mask is 1 (a scalar mask means the whole leaf is trainable)."""
  mask = jnp.asarray(mask)
  return on if mask.ndim == 0 else jnp.where(mask > 0, on, off)


def check_config(o: ml_collections.ConfigDict) -> None:
  """config.optim: learning rate, decay, clipping, schedule and Adam fields."""
  if o.lr <= 0:
    raise ConfigError(f"config.optim.lr must be > 0, got {o.lr}")
  for name in ("weight_decay", "clip_norm", "warmup_epochs", "warmup_init_lr", "min_lr"):
    if o[name] < 0:
      raise ConfigError(f"config.optim.{name} must be >= 0, got {o[name]}")
  for name in ("b1", "b2"):
    if not 0 <= o[name] < 1:
      raise ConfigError(f"config.optim.{name} must be in [0, 1), got {o[name]}")
  if o.wd_mask not in WD_MASKS:
    raise ConfigError(f"config.optim.wd_mask={o.wd_mask!r} is not one of {WD_MASKS}")
