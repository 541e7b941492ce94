"""Evaluation that counts every example exactly once (padded, masked last batch).

The caller (the trainer) hands in a pure `predict_fn(args, images) -> logits`, where
`args` is whatever pytree the predictions need (parameters, model state), and the task
kind's `sums_fn(logits, batch)` (per-batch sufficient statistics, incl. 'count') and
`metrics_fn(totals)`; this module knows nothing about training.

`config.evals` chooses what is measured: {name: {split, metrics, every_epochs}}; the
record of an evaluation holds `<name>_<metric>` (e.g. test_top1, val_top1).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from heat_jax.data.base import Split
from heat_jax.errors import ConfigError

PredictFn = Callable[[Any, jax.Array], jax.Array]
SumsFn = Callable[[jax.Array, dict], dict]
EvalStep = Callable[[Any, dict], dict]
SPLITS = ("train", "val", "test")


def make_eval_step(predict_fn: PredictFn, sums_fn: SumsFn) -> EvalStep:
  """jitted (args, batch) -> the task's sums over the mask == 1 rows of the batch."""

  def step(args, batch):
    return sums_fn(predict_fn(args, batch["image"]), batch)

  return jax.jit(step)


def evaluate(eval_step: EvalStep, args: Any, split: Split, batches: Iterable[dict],
             metrics_fn: Callable[[dict], dict], put_batch: Callable[[dict], dict] = lambda b: b
             ) -> dict[str, float]:
  """The task's metrics over every example of `split` (`batches`: its padded batches).

  In a multi-process run each process loads its rows of every batch and `put_batch`
  assembles the global batch; the step's sums are then over all processes' rows.
  """
  totals: dict[str, Any] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(args, put_batch(batch)))
    for k, v in sums.items():
      v = float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)
      totals[k] = totals.get(k, 0.0) + v
  count = float(totals.get("count", 0.0))
  if int(round(count)) != split.num_examples:
    raise RuntimeError(f"evaluated {count} examples of {split.name}, expected "
                       f"{split.num_examples}")
  return {**metrics_fn(totals), "num_examples": int(round(count))}


def check_evals(evals: ml_collections.ConfigDict, metric_names: tuple[str, ...]) -> None:
  """config.evals: every entry names a split, known metrics and a frequency; `test`
  measures the task's headline metric (`metric_names[0]`, what results.json reports)."""
  head = metric_names[0]
  if "test" not in evals or head not in metric_list(evals.test):
    raise ConfigError(f"config.evals needs an evaluation named test with metric {head} "
                      f"(results.json reports test_{head}), e.g. "
                      f"--config.evals.test.metrics={head}")
  for name, e in evals.items():
    for field in ("split", "metrics", "every_epochs"):
      if field not in e:
        raise ConfigError(f"config.evals.{name} has no field {field!r}")
    if e.split not in SPLITS:
      raise ConfigError(f"config.evals.{name}.split={e.split!r} is not one of {SPLITS}")
    bad = [m for m in metric_list(e) if m not in metric_names]
    if bad or not metric_list(e):
      raise ConfigError(f"config.evals.{name}.metrics={e.metrics!r}: metrics must be a "
                        f"comma-separated subset of {metric_names}")
    if e.every_epochs < 0:
      raise ConfigError(f"config.evals.{name}.every_epochs must be >= 0 (0 = "
                        f"train.eval_every_epochs), got {e.every_epochs}")


def metric_list(e: ml_collections.ConfigDict) -> list[str]:
  return [m.strip() for m in str(e.metrics).split(",") if m.strip()]


def due(e: ml_collections.ConfigDict, epoch: int, default_every: int) -> bool:
  """Whether evaluation `e` runs at the end of (integer) `epoch`."""
  return epoch % (e.every_epochs or default_every) == 0


def default_evals() -> ml_collections.ConfigDict:
  """Test top-1 and (when the data has a val split) val top-1, every
  train.eval_every_epochs epochs and after the last step."""
  return ml_collections.ConfigDict({
      "test": {"split": "test", "metrics": "top1", "every_epochs": 0},
      "val": {"split": "val", "metrics": "top1", "every_epochs": 0}})
