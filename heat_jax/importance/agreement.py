"""Does TIS find the heads that matter? TIS against the loss change of removing heads.

  spearman(a, b, valid)                         rank correlation over the heads
  group_ablation(model, params, batches, sets)  loss increase when each set of heads
                                                is removed at once (gates 0)
  compare(tis, ablation, valid)                 the numbers a study reports

The per-head reference is `tis.ablation_scores` (one head removed at a time, the
expensive loop); `group_ablation` removes a whole selection, e.g. the top-k heads by
TIS against the bottom-k. Both are references for studies and tests, never training.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Optional, Sequence

import jax
import numpy as np
import scipy.stats

from heat_jax.data.base import Batch
from heat_jax.errors import DataError
from heat_jax.importance import tis as tis_lib
from heat_jax.losses import masked_cross_entropy
from heat_jax.models.registry import head_layout


def spearman(a: np.ndarray, b: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
  """Spearman's rank correlation of two [layers, heads] arrays over the `valid` heads."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  valid = np.ones(a.shape, bool) if valid is None else np.asarray(valid, bool)
  keep = valid & np.isfinite(a) & np.isfinite(b)
  if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
    return float("nan")
  return float(scipy.stats.spearmanr(a[keep], b[keep]).statistic)


def group_ablation(model: Any, params: dict, batches: Iterable[Batch],
                   head_sets: Sequence[np.ndarray], *,
                   model_state: Optional[dict] = None) -> list[float]:
  """Mean loss increase on the real rows when each bool [layers, heads] set is removed.

  One jitted gated forward pass per set per batch (plus the plain model), averaged over
  batches weighted by their real rows, like `tis.ablation_scores`.
  """
  layout = head_layout(model)
  params = jax.device_put(params)
  model_state = jax.device_put(model_state or {})
  loss = jax.jit(functools.partial(tis_lib._gated_loss, model, masked_cross_entropy))
  ones = np.ones(layout.shape, np.float32)
  gates = [np.where(np.asarray(s, bool), 0.0, 1.0).astype(np.float32) for s in head_sets]
  totals, weight = np.zeros(len(gates)), 0.0
  for batch in batches:
    real = tis_lib._num_real(batch)
    if real == 0:
      continue
    arrays = jax.device_put(tis_lib._batch_arrays(batch))
    base = float(loss(params, model_state, *arrays, ones))
    for i, g in enumerate(gates):
      totals[i] += real * (float(loss(params, model_state, *arrays, g)) - base)
    weight += real
  if weight == 0:
    raise DataError("group ablation needs at least one batch with a real (mask = 1) row")
  return [float(t / weight) for t in totals]


def top_k(scores: np.ndarray, valid: np.ndarray, k: int, *, bottom: bool = False
          ) -> np.ndarray:
  """bool [layers, heads]: the k valid heads with the highest (or lowest) scores."""
  flat = np.where(np.asarray(valid, bool), np.asarray(scores, np.float64),
                  np.inf if bottom else -np.inf).ravel()
  order = np.argsort(flat, kind="stable")
  pick = order[:k] if bottom else order[::-1][:k]
  out = np.zeros(flat.shape, bool)
  out[pick] = True
  return out.reshape(np.shape(scores))


def compare(tis: np.ndarray, ablation: np.ndarray, valid: np.ndarray, k: int) -> dict:
  """Agreement of TIS with the per-head ablation (loss increase when removed alone)."""
  valid = np.asarray(valid, bool)
  top_tis, top_abl = top_k(tis, valid, k), top_k(ablation, valid, k)
  return {
      "spearman_tis_ablation": round(spearman(tis, ablation, valid), 4),
      "spearman_tis_abs_ablation": round(spearman(tis, np.abs(ablation), valid), 4),
      f"top{k}_overlap": int((top_tis & top_abl).sum()),
      "ablation_top_tis_mean": float(np.mean(ablation[top_tis])),
      "ablation_bottom_tis_mean": float(np.mean(ablation[top_k(tis, valid, k,
                                                                 bottom=True)])),
      "ablation_mean": float(np.mean(ablation[valid])),
  }
