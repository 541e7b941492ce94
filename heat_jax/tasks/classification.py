"""Image classification: logits [B, C], integer labels [B]; top-1 accuracy and mean CE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heat_jax import losses
from heat_jax.tasks.base import TaskKind, register_task_kind


@register_task_kind
class Classification(TaskKind):
  name = "classification"
  metric_names = ("top1", "loss")

  def num_outputs(self, data_task) -> int:
    return int(data_task.num_classes)

  def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
    return losses.masked_cross_entropy(logits, batch["label"], batch["mask"])

  def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    loss = losses.masked_cross_entropy(logits, batch["label"], mask)
    return {"correct": (correct * mask).sum(), "count": mask.sum(),
            "loss": loss * mask.sum()}

  def metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    count = max(float(sums["count"]), 1.0)
    return {"top1": float(sums["correct"]) / count, "loss": float(sums["loss"]) / count}
