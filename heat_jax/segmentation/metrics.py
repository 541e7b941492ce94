"""Segmentation metrics accumulated over a whole split, and the per-pixel loss.

mmseg's way (`mmseg.evaluation.metrics.IoUMetric`): one confusion matrix over every
labelled pixel of the split (rows = ground truth, columns = prediction), then per class
  IoU_c = TP_c / (TP_c + FP_c + FN_c),  Acc_c = TP_c / (TP_c + FN_c)
mIoU = the mean of IoU_c over the classes whose IoU is defined: a class absent from
both the ground truth and the predictions has 0 / 0 = NaN and is left out of the mean
(nanmean); a class only predicted has IoU 0 and counts. Pixel accuracy (mmseg's aAcc)
= trace / sum. Not a mean of per-image IoUs. Pixels whose label is `ignore_index`
(and padding rows, mask 0) are never counted.

The confusion matrix of a batch is computed in JAX on the (possibly sharded) global
batch, so its counts are sums over every device and process; the split's total is
accumulated on the host in int64.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IGNORE_INDEX = 255


def confusion_matrix(pred: Array, label: Array, num_classes: int, *,
                     ignore_index: int = IGNORE_INDEX,
                     mask: Optional[Array] = None) -> Array:
  """int32 [K, K] counts of (label, pred) pairs over the valid pixels.

  pred, label: integer [B, H, W]; mask: optional [B] (0 = padding row). Valid pixels
  have 0 <= label < K, label != ignore_index.
  """
  label = label.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
  if mask is not None:
    valid &= (mask > 0).reshape((-1,) + (1,) * (label.ndim - 1))
  index = jnp.where(valid, label * num_classes + jnp.clip(pred, 0, num_classes - 1), 0)
  counts = jnp.bincount(index.reshape(-1), weights=valid.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
  """mIoU, pixel accuracy, mean class accuracy and per-class IoU from a confusion matrix.

  Fractions in [0, 1]; per-class entries are NaN for classes absent from both ground
  truth and predictions (IoU) or from the ground truth (accuracy).
  """
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pr = cm.sum(axis=0)
  union = gt + pr - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = tp / union                    # 0 / 0 = NaN: absent class
    acc = tp / gt
  total = cm.sum()
  defined = ~np.isnan(iou)
  return {"miou": float(np.mean(iou[defined])) if defined.any() else float("nan"),
          "pixel_acc": float(tp.sum() / total) if total else float("nan"),
          "mean_acc": float(np.nanmean(acc)) if (~np.isnan(acc)).any() else float("nan"),
          "iou": [float(v) for v in iou], "num_pixels": int(total)}


def pixel_cross_entropy(logits: Array, labels: Array, mask: Optional[Array] = None, *,
                        ignore_index: int = IGNORE_INDEX) -> Array:
  """Mean softmax cross-entropy over the labelled pixels.

  logits [B, H, W, C] (at the label resolution), labels [B, H, W]; pixels labelled
  `ignore_index` (or outside [0, C)) and padding rows (mask 0) are left out of the sum
  and of the count (mmseg's `avg_non_ignore=True`).
  """
  c = logits.shape[-1]
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < c)
  if mask is not None:
    valid &= (mask > 0).reshape((-1,) + (1,) * (labels.ndim - 1))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  w = valid.astype(jnp.float32)
  return -(picked * w).sum() / jnp.maximum(w.sum(), 1.0)
