"""Training one submodule type of a backbone in a random subspace (intrinsic dimension).

The parameters of one submodule type (every attention module, or every MLP) become
theta = theta0 + P @ theta_d, theta_d in R^d trained from zero, P a fixed dense
Gaussian [N, d] with entries N(0, 1/d): every coordinate of P @ theta_d has the same
variance (mean theta_d^2) whatever d, so one Adam step on theta_d moves each backbone
coordinate by about one learning rate, as in full fine-tuning, and one lr serves every
d. The classifier head trains directly (a new task needs one); everything else is
frozen.

`SubspaceModel` puts this on the ordinary engine: it exposes the linen `apply` that
`heat_jax.models.apply.apply_model` calls, over the variables {'params': {'backbone':
the plain backbone tree, 'theta_d': [d], 'projection': P}}, so the usual `Trainer`
(masked AdamW, jitted donated step, evaluation) trains it with the mask "theta_d and
the backbone's head". P and theta0 are frozen leaves: arguments of the step, never
compiled-in constants and never differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heat_jax.data.base import Task
from heat_jax.errors import ConfigError
from heat_jax.experiment import check_finite
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer, epoch_batches

# Submodule type -> the module names that hold it (ViT, Swin).
PARTS = {"attention": ("MultiHeadDotProductAttention_0", "attn"),
         "mlp": ("MlpBlock_0", "mlp")}


def part_keys(params: dict, part: str) -> list[str]:
  """Flat keys of every parameter of submodule type `part`, in tree order."""
  if part not in PARTS:
    raise ConfigError(f"unknown submodule type {part!r}; use one of {', '.join(PARTS)}")
  keys = [k for k in partition.flatten(params) if set(k.split("/")) & set(PARTS[part])]
  if not keys:
    raise ConfigError(f"the model has no {part} parameters (looked for "
                      f"{', '.join(PARTS[part])})")
  return keys


def part_size(params: dict, part: str) -> int:
  flat = partition.flatten(params)
  return sum(int(np.size(flat[k])) for k in part_keys(params, part))


def random_projection(num_params: int, dim: int, seed: int) -> np.ndarray:
  """Dense Gaussian P [num_params, dim], entries N(0, 1/dim), float32."""
  p = jax.random.normal(jax.random.key(seed), (num_params, dim), jnp.float32)
  return np.asarray(p * (1.0 / np.sqrt(dim)))


@dataclasses.dataclass(frozen=True)
class SubspaceModel:
  """A plain backbone whose `keys` parameters are theta0 + P @ theta_d (see module doc)."""

  backbone: nn.Module
  keys: tuple[str, ...]

  def apply(self, variables: dict, images: jax.Array, *, train: bool = False,
            rngs: Optional[dict] = None) -> jax.Array:
    p = variables["params"]
    flat = partition.flatten(p["backbone"])
    offset = p["projection"] @ p["theta_d"]
    start = 0
    for key in self.keys:  # P's rows follow `keys` in order, each leaf row-major
      size = int(np.prod(flat[key].shape))
      flat[key] = flat[key] + offset[start:start + size].reshape(flat[key].shape)
      start += size
    return self.backbone.apply({"params": partition.unflatten(flat)}, images, train=train,
                               rngs=rngs)


def subspace_setup(backbone: nn.Module, params: dict, part: str, dim: int, seed: int
                   ) -> tuple[SubspaceModel, dict, partition.FlatMask]:
  """(model, params, mask) training `part` in a random `dim`-dimensional subspace."""
  keys = tuple(part_keys(params, part))
  wrapped = {"backbone": params, "theta_d": np.zeros((dim,), np.float32),
             "projection": random_projection(part_size(params, part), dim, seed)}
  mask = partition.mask_from_predicate(
      wrapped, lambda k, _: k == "theta_d" or k.startswith("backbone/head/"))
  return SubspaceModel(backbone, keys), wrapped, mask


def direct_mask(params: dict, part: Optional[str]) -> partition.FlatMask:
  """Full fine-tuning of `part` (None: nothing) plus the head."""
  keys = set(part_keys(params, part)) if part else set()
  return partition.mask_from_predicate(params,
                                       lambda k, _: k in keys or partition.is_head(k))


def fit(model: Any, params: dict, mask: partition.FlatMask, config: ml_collections.ConfigDict,
        task: Task) -> float:
  """Trains with the engine's Trainer for `config.train.epochs`; returns test top-1."""
  t = config.train
  steps_per_epoch = task.train.num_examples // t.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(f"batch size {t.batch_size} is larger than the "
                      f"{task.train.num_examples} training images; lower it")
  trainer = Trainer(model, params, mask, config.optim, total_steps=t.epochs * steps_per_epoch,
                    steps_per_epoch=steps_per_epoch, seed=config.seed)
  state = trainer.initial_state()
  finite = []
  for epoch in range(t.epochs):
    for batch in epoch_batches(task.train, t.batch_size, seed=config.seed, epoch=epoch):
      state, metrics = trainer.train_step(state, batch)
      finite.append((len(finite) + 1, metrics["finite"]))
  check_finite(finite)
  return float(trainer.evaluate(state, task.test, t.eval_batch_size)["top1"])
