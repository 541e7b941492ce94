"""Training one submodule type of a backbone in a random subspace (intrinsic dimension).

The parameters of one submodule type (every attention module, or every MLP) become
theta = theta0 + P theta_d, theta_d in R^d trained from zero, P [N, d] a fixed random
projection in the Fastfood form of Li et al. (2018): P theta_d = S H G Pi H B
[theta_d; 0] with H the Walsh-Hadamard transform of length L = 2^k >= max(N, d), B random
signs, Pi a random permutation, G Gaussian, and S = 1 / sqrt(d * sum(G^2)) so that every
coordinate of P theta_d has variance about mean(theta_d^2) whatever d, as a dense P with
N(0, 1/d) entries would. One Adam step on theta_d then moves each backbone coordinate
by about one learning rate, as in full fine-tuning. Fastfood needs O(L) memory and
O(L log L) time per step, so d can grow to N (a dense P of 66k x 50k would take 13 GB).
The classifier head trains directly (a new task needs one); everything else is frozen.

`SubspaceModel` puts this on the ordinary engine: it exposes the linen `apply` that
`heat_jax.models.apply.apply_model` calls, over the variables {'params': {'backbone':
the plain backbone tree, 'theta_d': [d], 'projection': Fastfood's B, Pi, G}}, so the
usual `Trainer` (masked AdamW, jitted donated step, evaluation) trains it with the mask
"theta_d and the backbone's head". The projection and theta0 are frozen leaves:
arguments of the step, never compiled-in constants and never differentiated.
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
from heat_jax.loop import check_finite
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


def hadamard(x: jax.Array) -> jax.Array:
  """Unnormalised Walsh-Hadamard transform of the last axis (a power of 2), O(L log L)."""
  length = x.shape[-1]
  if length & (length - 1):
    raise ValueError(f"hadamard needs a power-of-2 length, got {length}")
  lead, h = x.shape[:-1], 1
  while h < length:   # butterfly: pairs (j, j + h) within blocks of 2h
    y = x.reshape(*lead, length // (2 * h), 2, h)
    x = jnp.stack([y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]],
                  axis=-2).reshape(*lead, length)
    h *= 2
  return x


def fastfood_projection(num_params: int, dim: int, seed: int) -> dict[str, np.ndarray]:
  """Fastfood's random parts for a [num_params, dim] projection (see module doc)."""
  length = 1 << (max(num_params, dim, 1) - 1).bit_length()   # the next power of 2
  k_sign, k_perm, k_gauss = jax.random.split(jax.random.key(seed), 3)
  gauss = np.asarray(jax.random.normal(k_gauss, (length,), jnp.float32))
  return {"signs": np.asarray(jax.random.rademacher(k_sign, (length,), jnp.float32)),
          "perm": np.asarray(jax.random.permutation(k_perm, length), np.int32),
          "gauss": gauss,
          "scale": np.float32(1.0 / np.sqrt(dim * np.sum(np.square(gauss, dtype=np.float64))))}


def fastfood(projection: dict, theta: jax.Array, num_params: int) -> jax.Array:
  """P theta [num_params] for Fastfood parts `projection` and theta [d]."""
  length = projection["signs"].shape[0]
  x = jnp.pad(theta, (0, length - theta.shape[0])) * projection["signs"]
  x = hadamard(x)[projection["perm"]] * projection["gauss"]
  return hadamard(x)[:num_params] * projection["scale"]


@dataclasses.dataclass(frozen=True)
class SubspaceModel:
  """A plain backbone whose `keys` parameters are theta0 + P @ theta_d (see module doc)."""

  backbone: nn.Module
  keys: tuple[str, ...]

  def apply(self, variables: dict, images: jax.Array, *, train: bool = False,
            rngs: Optional[dict] = None) -> jax.Array:
    p = variables["params"]
    flat = partition.flatten(p["backbone"])
    sizes = [int(np.prod(flat[key].shape)) for key in self.keys]
    offset = fastfood(p["projection"], p["theta_d"], sum(sizes))
    start = 0
    for key, size in zip(self.keys, sizes):  # P's rows follow `keys`, each leaf row-major
      flat[key] = flat[key] + offset[start:start + size].reshape(flat[key].shape)
      start += size
    return self.backbone.apply({"params": partition.unflatten(flat)}, images, train=train,
                               rngs=rngs)


def subspace_setup(backbone: nn.Module, params: dict, part: str, dim: int, seed: int
                   ) -> tuple[SubspaceModel, dict, partition.FlatMask]:
  """(model, params, mask) training `part` in a random `dim`-dimensional subspace."""
  keys = tuple(part_keys(params, part))
  wrapped = {"backbone": params, "theta_d": np.zeros((dim,), np.float32),
             "projection": fastfood_projection(part_size(params, part), dim, seed)}
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
