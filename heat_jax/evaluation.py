"""Evaluation that counts every example exactly once (padded, masked last batch)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from heat_jax import losses
from heat_jax.data.base import Split
from heat_jax.training import partition

EvalStep = Callable[[Any, Any, dict], tuple[jax.Array, jax.Array, jax.Array]]


def make_eval_step(model: nn.Module) -> EvalStep:
  """jitted (trainable, frozen, batch) -> (correct, count, loss_sum) over mask rows."""

  def step(trainable, frozen, batch):
    params = partition.merge(trainable, frozen)
    logits = model.apply({"params": params}, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    loss = losses.masked_cross_entropy(logits, batch["label"], mask)
    return (correct * mask).sum(), mask.sum(), loss * mask.sum()

  return jax.jit(step)


def evaluate(eval_step: EvalStep, trainable: Any, frozen: Any, split: Split,
             batch_size: int, put_batch: Callable[[dict], dict] = lambda b: b
             ) -> dict[str, float]:
  """Top-1 accuracy and mean loss over every example of `split`."""
  correct = count = loss = 0.0
  for batch in split.batches(batch_size, shuffle=False, pad=True):
    c, n, l = eval_step(trainable, frozen, put_batch(batch))
    correct, count, loss = correct + float(c), count + float(n), loss + float(l)
  if int(round(count)) != split.num_examples:
    raise RuntimeError(f"evaluated {count} examples of {split.name}, expected "
                       f"{split.num_examples}")
  return {"top1": correct / max(count, 1.0), "loss": loss / max(count, 1.0),
          "num_examples": int(round(count))}
