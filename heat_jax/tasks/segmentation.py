"""Semantic segmentation: per-pixel logits [B, H, W, C], labels [B, H, W] with an ignore
index; mIoU / pixel accuracy / mean class accuracy from one confusion matrix per split.

Everything dense lives in `heat_jax.segmentation`; this kind connects it to the engine:
  extensions()   the `seg_head` decoder extension (config.seg) after the method's
  loss           per-pixel cross-entropy + aux_weight x the auxiliary head's
  eval_predict   the trainer's forward wrapped in config.seg's inference (whole /
                 sliding windows, scales, flip): averaged softmax at the image size
  eval_sums      {'confusion' [C, C], 'count'}, summed over batches and processes
  metrics        mIoU, pixel accuracy, mean accuracy (fractions; NaN classes excluded)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from heat_jax.errors import ConfigError
from heat_jax.segmentation import inference, metrics as seg_metrics
from heat_jax.segmentation.head import head_spec, split_logits
from heat_jax.tasks.base import TaskKind, register_task_kind


@register_task_kind
class Segmentation(TaskKind):
  name = "segmentation"
  metric_names = ("miou", "pixel_acc", "mean_acc")

  def _seg(self):
    if self.config is None or self.config.get("seg") is None:
      raise ConfigError("task_kind=segmentation needs the config.seg block "
                        "(configs/common.py base_config)")
    return self.config.seg

  def validate(self) -> None:
    head_spec(self._seg())
    self.inference_options()

  def extensions(self) -> tuple:
    return (head_spec(self._seg()),)

  def num_outputs(self, data_task: Any) -> int:
    if data_task.info.get("kind") != "segmentation":
      raise ConfigError(f"task_kind=segmentation but data {data_task.name} has no per-pixel "
                        "labels; use data.source seg_synthetic or ade20k")
    return int(data_task.num_classes)

  def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
    seg = self._seg()
    main, aux = split_logits(logits, self._num_classes(logits, batch))
    ignore = int(seg.ignore_index)
    out = seg_metrics.pixel_cross_entropy(main, batch["label"], batch["mask"],
                                          ignore_index=ignore)
    if aux is not None and seg.aux_weight > 0:
      out = out + float(seg.aux_weight) * seg_metrics.pixel_cross_entropy(
          aux, batch["label"], batch["mask"], ignore_index=ignore)
    return out

  def _num_classes(self, logits: jax.Array, batch: dict) -> int:
    k = int(self.config.data.num_classes or 0)
    if k:
      return k
    return logits.shape[-1] // 2 if self._seg().aux_weight > 0 else logits.shape[-1]

  def inference_options(self) -> dict[str, Any]:
    seg, size = self._seg(), int(self.config.model.image_size)
    if seg.mode not in inference.MODES:
      raise ConfigError(f"config.seg.mode={seg.mode!r} is not one of {inference.MODES}")
    crop = int(seg.crop) or size
    stride = int(seg.stride) or max(1, (2 * crop) // 3)
    if crop != size:
      raise ConfigError(f"config.seg.crop={crop} must equal config.model.image_size={size} "
                        "(the model runs on crops of its own size)")
    if stride < 1:
      raise ConfigError(f"config.seg.stride={seg.stride} must be >= 0 (0 = 2/3 of the crop)")
    try:
      scales = tuple(float(s) for s in str(seg.scales).split(","))
    except ValueError:
      raise ConfigError(f"config.seg.scales={seg.scales!r} must be comma-separated numbers, "
                        "e.g. 0.5,0.75,1.0,1.25,1.5,1.75") from None
    if min(scales) <= 0:
      raise ConfigError(f"config.seg.scales={seg.scales!r} must be positive")
    return {"mode": str(seg.mode), "crop": (crop, crop), "stride": (stride, stride),
            "scales": scales, "flip": bool(seg.flip)}

  def eval_predict(self, predict_fn: Callable) -> Callable:
    options = self.inference_options()

    def predict(args, images):   # eval mode: the head returns the main logits only
      return inference.probabilities(lambda x: predict_fn(args, x), images,
                                     out_hw=tuple(images.shape[1:3]), **options)

    return predict

  def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    cm = seg_metrics.confusion_matrix(jnp.argmax(logits, -1), batch["label"],
                                      logits.shape[-1],
                                      ignore_index=int(self._seg().ignore_index),
                                      mask=batch["mask"])
    return {"confusion": cm, "count": batch["mask"].astype(jnp.float32).sum()}

  def metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    s = seg_metrics.scores(np.rint(np.asarray(sums["confusion"])).astype(np.int64))
    return {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"]}


def default_evals():
  """Test mIoU / pixel accuracy (and val when present), as evaluation.default_evals."""
  import ml_collections
  return ml_collections.ConfigDict({
      "test": {"split": "test", "metrics": "miou,pixel_acc", "every_epochs": 0},
      "val": {"split": "val", "metrics": "miou,pixel_acc", "every_epochs": 0}})
