"""The training engine: jitted, donated train step over a data-parallel mesh.

`Trainer` owns the train state {step, params (trainable tree), model_state (mutable
collections such as `batch_stats`), opt_state, rng}; the frozen tree is an argument of
the step (never a compiled-in constant, never differentiated). Batches are sharded over
a `jax.sharding.Mesh` of all devices (of all processes, see `heat_jax.distributed`)
along 'data'; parameters and model state are replicated; XLA inserts the gradient
all-reduce. Each process passes only its rows of a batch (`local_rows`) to `put_batch`.
Evaluation gets a predict function from here (`heat_jax.evaluation` imports nothing
from training).

Cost follows the mask (`partition.Partition`): a mask that selects heads makes only
those heads' slices trainable arrays, and the attention computes their projections in
split form, so weight gradients and Adam moments scale with the selected heads.
`accum_steps` > 1 sums the gradient of the batch over that many micro-batches
(`batch / accum_steps` rows each, one `lax.scan`) before one optimizer update:
the same update as one batch (to float rounding) with activations for one
micro-batch in memory. Batch statistics (BatchNorm model state) are updated once per
micro-batch, from that micro-batch, so they differ from a one-batch step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heat_jax import distributed
from heat_jax.errors import ConfigError
from heat_jax.evaluation import evaluate, make_eval_step
from heat_jax.feed import Feed
from heat_jax.models.apply import apply_model
from heat_jax.models.attention_paths import ATTENTION_CHILDREN, attention_paths
from heat_jax.tasks import TaskKind, get_task_kind
from heat_jax.training import optimizer, partition

State = dict[str, Any]


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes, axis 'data' (classic propagation)."""
  return distributed.make_mesh()


def compiler_options(mesh: jax.sharding.Mesh) -> Optional[dict]:
  """XLA options of the train step for the mesh's platform.

  On CPU, XLA's default copy insertion copies every donated parameter that the
  backward pass reads (it cannot order those reads before the in-place update without
  region analysis): for a full ViT-B/16 step that is 324 MB copied per step. Region
  analysis proves the order and drops the copies.
  """
  if mesh.devices.flat[0].platform == "cpu":
    return {"xla_cpu_copy_insertion_use_region_analysis": True}
  return None


@dataclasses.dataclass
class Trainer:
  """Builds the optimizer and the compiled steps for one model and trainable mask.

  `accum_steps`: micro-batches per optimizer step (the batch size must divide by it).
  `task_kind` gives the loss and the evaluation sums; `feed` the mesh and batches.
  """

  model: nn.Module
  params: dict
  mask: partition.FlatMask
  optim: ml_collections.ConfigDict
  total_steps: int
  steps_per_epoch: int
  seed: int = 0
  model_state: Optional[dict] = None
  accum_steps: int = 1
  task_kind: Optional[TaskKind] = None
  feed: Optional[Feed] = None

  def __post_init__(self):
    if self.accum_steps < 1:
      raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
    self.partition = partition.Partition(self.params, self.mask,
                                         split_keys=attention_kernels(self.params))
    trainable, frozen = self.partition.split(self.params)
    self.masks = self.partition.element_masks(trainable)
    self.tx, self.schedule = optimizer.make_optimizer(
        self.optim, trainable, self.masks, total_steps=self.total_steps,
        steps_per_epoch=self.steps_per_epoch)
    self.task_kind = self.task_kind or get_task_kind("classification")
    self.feed = self.feed or Feed.create()
    self.mesh = self.feed.mesh
    self.replicated = self.feed.replicated
    self.data_sharding = self.feed.data_sharding
    self.frozen = distributed.replicate(frozen, self.replicated)
    self._init_trainable = trainable
    self._train_step = jax.jit(self._step, donate_argnums=(0,),
                               compiler_options=compiler_options(self.mesh))
    self._eval_step = make_eval_step(self.task_kind.eval_predict(self.predict),
                                     self.task_kind.eval_sums)

  def initial_state(self) -> State:
    # Built in this process, then replicated over the (possibly multi-process) mesh.
    trainable = self._init_trainable
    rng = jax.random.key_data(jax.random.key(self.seed))
    state = {"step": jnp.zeros((), jnp.int32), "params": trainable,
             "model_state": dict(self.model_state or {}),
             "opt_state": self.tx.init(trainable), "rng": rng}
    return distributed.replicate(state, self.replicated)

  def local_rows(self, batch_size: int) -> np.ndarray:
    """Positions of a global batch that this process loads (all rows in one process)."""
    return self.feed.rows(batch_size)

  def put_batch(self, batch: dict) -> dict:
    """The global batch from this process's rows (`local_rows`) of it."""
    return self.feed.put(batch)

  def _step(self, state: State, frozen: Any, batch: dict) -> tuple[State, dict]:
    rng = jax.random.wrap_key_data(state["rng"])
    step_rng = jax.random.fold_in(rng, state["step"])
    if self.accum_steps == 1:
      loss, model_state, grads = self._gradients(state["params"], frozen,
                                                 state["model_state"], batch, step_rng)
    else:
      loss, model_state, grads = self._accumulated(state["params"], frozen,
                                                   state["model_state"], batch, step_rng)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optimizer.apply_masked_updates(state["params"], updates, self.masks)
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state,
                 "opt_state": opt_state, "rng": state["rng"]}
    # The norm of the gradient that is applied (masked-out elements excluded). Written
    # as |g| * |g|, not g * g: XLA would merge g * g with Adam's own square of g and
    # then write the shared square out (two extra passes over the gradient).
    applied = optimizer.mask_tree(grads, self.masks)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.abs(g) * jnp.abs(g))
                             for g in jax.tree.leaves(applied)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return new_state, {"loss": loss, "grad_norm": grad_norm,
                       "lr": self.schedule(state["step"]), "finite": finite}

  def _gradients(self, trainable: Any, frozen: Any, model_state: Any, batch: dict,
                 rng: jax.Array, weight: Optional[jax.Array] = None):
    """(loss, new model state, gradient) of one batch; `weight` scales the loss."""

    def loss_fn(trainable):
      params = self.partition.model_params(trainable, frozen)
      logits, new_state = apply_model(self.model, params, model_state, batch["image"],
                                      train=True, rng=rng)
      loss = self.task_kind.loss(logits, batch)
      return (loss if weight is None else loss * weight), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return loss, new_state, grads

  def _accumulated(self, trainable: Any, frozen: Any, model_state: Any, batch: dict,
                   rng: jax.Array):
    """The gradient of the whole batch's mean loss, summed over `accum_steps` micro-batches.

    Micro-batch j holds rows j, j + k, j + 2k, ... (so under data parallelism every
    device keeps its share). Each micro-batch's mean loss is weighted by its share of
    the batch's (mask-weighted) rows, so the sum equals the one-batch loss and gradient.
    The model state (e.g. batch statistics) is updated once per micro-batch.
    """
    k = self.accum_steps
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)
    total = jnp.maximum(batch["mask"].astype(jnp.float32).sum(), 1.0)

    def body(carry, inputs):
      grads, loss, model_state = carry
      j, mb = inputs
      weight = jnp.maximum(mb["mask"].astype(jnp.float32).sum(), 1.0) / total
      l, model_state, g = self._gradients(trainable, frozen, model_state, mb,
                                          jax.random.fold_in(rng, j), weight)
      return (jax.tree.map(jnp.add, grads, g), loss + l, model_state), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (grads, loss, model_state), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), model_state), (jnp.arange(k), micro))
    return loss, model_state, grads

  def predict(self, args: dict, images: jax.Array) -> jax.Array:
    """Eval-mode logits; `args` = {'params', 'frozen', 'model_state'} (see `eval_args`)."""
    params = self.partition.merge(args["params"], args["frozen"])
    return apply_model(self.model, params, args["model_state"], images, train=False)[0]

  def eval_args(self, state: State) -> dict:
    return {"params": state["params"], "frozen": self.frozen,
            "model_state": state["model_state"]}

  def train_step(self, state: State, batch: dict) -> tuple[State, dict]:
    return self._train_step(state, self.frozen, self.put_batch(batch))

  def evaluate(self, state: State, split, batch_size: int) -> dict[str, float]:
    """The task kind's metrics of the current state over every example of `split`."""
    return evaluate(self._eval_step, self.eval_args(state), split,
                    self.feed.batches(split, batch_size), self.task_kind.metrics,
                    put_batch=self.put_batch)

  def full_params(self, state: State) -> dict:
    """The complete parameter tree (host numpy) for the current state."""
    return distributed.fetch(self.partition.merge(state["params"], self.frozen))

  def full_model_state(self, state: State) -> dict:
    """The model state (host numpy) of the current state."""
    return distributed.fetch(state["model_state"])


def attention_kernels(params: dict) -> list[str]:
  """Keys of the attention projection kernels (they accept a split-head kernel)."""
  return [f"{'/'.join(path)}/{name}/kernel" for path in attention_paths(params)
          for name in ATTENTION_CHILDREN]


def epoch_batches(split, batch_size: int, *, seed: int, epoch: int, skip: int = 0,
                  rows: Optional[np.ndarray] = None) -> Iterator[dict]:
  """Shuffled, drop-remainder training batches of one epoch, skipping the first `skip`;
  `rows`: only this process's share of each batch (the engine uses `Feed.epoch`)."""
  for i, batch in enumerate(split.batches(batch_size, shuffle=True, seed=seed, epoch=epoch,
                                          drop_remainder=True, rows=rows)):
    if i >= skip:
      yield batch


def check_config(train: ml_collections.ConfigDict) -> None:
  """config.train: batch sizes against the devices, step counts and frequencies."""
  t = train
  if t.batch_size < 1 or t.eval_batch_size < 1:
    raise ConfigError("config.train.batch_size and eval_batch_size must be >= 1")
  n_dev = jax.device_count()  # every device of every process holds a part of a batch
  where = "" if jax.process_count() == 1 else f" of the {jax.process_count()} processes"
  if t.batch_size % n_dev or t.eval_batch_size % n_dev:
    raise ConfigError(f"batch sizes ({t.batch_size}, {t.eval_batch_size}) must be "
                      f"divisible by the {n_dev} devices{where}")
  if t.accum_steps < 1 or t.batch_size % (t.accum_steps * n_dev):
    raise ConfigError(f"config.train.accum_steps={t.accum_steps} must be >= 1 and divide "
                      f"config.train.batch_size={t.batch_size} into micro-batches that "
                      f"split evenly over the {n_dev} devices{where}")
  if t.epochs < 1:
    raise ConfigError(f"config.train.epochs must be >= 1, got {t.epochs}")
  for name in ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps"):
    if t[name] < 1:
      raise ConfigError(f"config.train.{name} must be >= 1, got {t[name]}")
  if t.max_steps < 0:
    raise ConfigError(f"config.train.max_steps must be >= 0 (0 = no cap), got {t.max_steps}")
