"""The training engine: jitted, donated train step over a data-parallel mesh.

`Trainer` owns the train state {step, params (trainable tree), opt_state, rng}; the
frozen tree is an argument of the step (never a compiled-in constant, never
differentiated). Batches are sharded over a `jax.sharding.Mesh` of all local devices
along 'data'; parameters are replicated; XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from heat_jax import losses
from heat_jax.evaluation import evaluate, make_eval_step
from heat_jax.training import optimizer, partition

State = dict[str, Any]


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all local devices, axis 'data' (classic sharding propagation)."""
  devices = jax.local_devices()
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass
class Trainer:
  """Builds the optimizer and the compiled steps for one model and trainable mask."""

  model: nn.Module
  params: dict
  mask: partition.FlatMask
  optim: ml_collections.ConfigDict
  total_steps: int
  steps_per_epoch: int
  seed: int = 0

  def __post_init__(self):
    partition.check_mask(self.params, self.mask)
    trainable, frozen = partition.split(self.params, self.mask)
    self.masks = partition.element_masks(trainable, self.mask)
    self.tx, self.schedule = optimizer.make_optimizer(
        self.optim, trainable, self.masks, total_steps=self.total_steps,
        steps_per_epoch=self.steps_per_epoch)
    self.mesh = make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.frozen = jax.device_put(frozen, self.replicated)
    self._init_trainable = trainable
    self._train_step = jax.jit(self._step, donate_argnums=(0,))
    self._eval_step = make_eval_step(self.model)

  def initial_state(self) -> State:
    trainable = jax.device_put(self._init_trainable, self.replicated)
    rng = jax.random.key_data(jax.random.key(self.seed))
    state = {"step": jnp.zeros((), jnp.int32), "params": trainable,
             "opt_state": self.tx.init(trainable), "rng": rng}
    return jax.device_put(state, self.replicated)

  def put_batch(self, batch: dict) -> dict:
    n = len(self.mesh.devices.flat)
    if len(batch["label"]) % n:
      raise ValueError(f"batch of {len(batch['label'])} is not divisible by {n} devices")
    return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, self.data_sharding)

  def _step(self, state: State, frozen: Any, batch: dict) -> tuple[State, dict]:
    rng = jax.random.wrap_key_data(state["rng"])
    step_rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(trainable):
      params = partition.merge(trainable, frozen)
      logits = self.model.apply({"params": params}, batch["image"], train=True,
                                rngs={"dropout": step_rng})
      return losses.masked_cross_entropy(logits, batch["label"], batch["mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optimizer.apply_masked_updates(state["params"], updates, self.masks)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "rng": state["rng"]}
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    return new_state, {"loss": loss, "grad_norm": grad_norm,
                       "lr": self.schedule(state["step"])}

  def train_step(self, state: State, batch: dict) -> tuple[State, dict]:
    return self._train_step(state, self.frozen, self.put_batch(batch))

  def evaluate(self, state: State, split, batch_size: int) -> dict[str, float]:
    return evaluate(self._eval_step, state["params"], self.frozen, split, batch_size,
                    put_batch=self.put_batch)

  def full_params(self, state: State) -> dict:
    """The complete parameter tree (host numpy) for the current state."""
    return jax.device_get(partition.merge(state["params"], self.frozen))


def epoch_batches(split, batch_size: int, *, seed: int, epoch: int, skip: int = 0
                  ) -> Iterator[dict]:
  """Shuffled, drop-remainder training batches of one epoch, skipping the first `skip`."""
  for i, batch in enumerate(split.batches(batch_size, shuffle=True, seed=seed, epoch=epoch,
                                          drop_remainder=True)):
    if i >= skip:
      yield batch
