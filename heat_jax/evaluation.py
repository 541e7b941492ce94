"""Evaluation that counts every example exactly once (padded, masked last batch).

The caller (the trainer) hands in a pure `predict_fn(args, images) -> logits`, where
`args` is whatever pytree the predictions need (parameters, model state); this module
knows nothing about training.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heat_jax import losses
from heat_jax.data.base import Split

PredictFn = Callable[[Any, jax.Array], jax.Array]
EvalStep = Callable[[Any, dict], tuple[jax.Array, jax.Array, jax.Array]]


def make_eval_step(predict_fn: PredictFn) -> EvalStep:
  """jitted (args, batch) -> (correct, count, loss_sum) over the mask == 1 rows."""

  def step(args, batch):
    logits = predict_fn(args, batch["image"])
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    loss = losses.masked_cross_entropy(logits, batch["label"], mask)
    return (correct * mask).sum(), mask.sum(), loss * mask.sum()

  return jax.jit(step)


def evaluate(eval_step: EvalStep, args: Any, split: Split, batch_size: int,
             put_batch: Callable[[dict], dict] = lambda b: b,
             rows: Optional[np.ndarray] = None) -> dict[str, float]:
  """Top-1 accuracy and mean loss over every example of `split`.

  In a multi-process run each process loads its `rows` of every batch and `put_batch`
  assembles the global batch; the step's sums are then over all processes' rows.
  """
  correct = count = loss = 0.0
  for batch in split.batches(batch_size, shuffle=False, pad=True, rows=rows):
    c, n, l = eval_step(args, put_batch(batch))
    correct, count, loss = correct + float(c), count + float(n), loss + float(l)
  if int(round(count)) != split.num_examples:
    raise RuntimeError(f"evaluated {count} examples of {split.name}, expected "
                       f"{split.num_examples}")
  return {"top1": correct / max(count, 1.0), "loss": loss / max(count, 1.0),
          "num_examples": int(round(count))}
