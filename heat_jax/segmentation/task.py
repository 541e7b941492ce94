"""What a segmentation run needs from the engine: its head, loss and evaluator.

  head_extension(config)   the `seg_head` extension appended to the method's
  loss_fn(config, K)       per-pixel cross-entropy (+ aux_weight x the auxiliary head's)
  make_eval_step(...)      jitted (args, batch) -> confusion matrix [K, K] of the batch
                           under the configured inference (whole / slide, scales, flip)
  evaluate(...)            mIoU / pixel accuracy over a whole split (one confusion matrix)

`predict_fn(args, images) -> logits [B, H, W, K]` is the trainer's eval-mode forward.
Batches are the global (sharded) ones, so each step's counts already sum every device
and process; the split total is accumulated in int64 on the host.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from heat_jax.errors import ConfigError
from heat_jax.segmentation import inference, metrics
from heat_jax.segmentation.head import SegHeadSpec, head_spec, is_dense, split_logits

Array = jax.Array
PredictFn = Callable[[Any, Array], Array]

__all__ = ["is_dense", "head_extension", "loss_fn", "inference_options", "make_eval_step",
           "evaluate"]


def head_extension(config: ml_collections.ConfigDict) -> SegHeadSpec:
  return head_spec(config.seg)


def loss_fn(config: ml_collections.ConfigDict, num_classes: int
            ) -> Callable[[Array, Array, Optional[Array]], Array]:
  """(logits, labels, mask) -> loss; the auxiliary logits (train mode) weigh aux_weight."""
  ignore, aux_weight = int(config.seg.ignore_index), float(config.seg.aux_weight)

  def loss(logits: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    main, aux = split_logits(logits, num_classes)
    out = metrics.pixel_cross_entropy(main, labels, mask, ignore_index=ignore)
    if aux is not None and aux_weight > 0:
      out = out + aux_weight * metrics.pixel_cross_entropy(aux, labels, mask,
                                                           ignore_index=ignore)
    return out

  return loss


def _pair(value: int) -> tuple[int, int]:
  return int(value), int(value)


def inference_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.seg`'s inference resolved: mode, crop, stride, scales, flip."""
  seg = config.seg
  if seg.mode not in inference.MODES:
    raise ConfigError(f"config.seg.mode={seg.mode!r} is not one of {inference.MODES}")
  crop = int(seg.crop) or int(config.model.image_size)
  stride = int(seg.stride) or max(1, (2 * crop) // 3)
  if crop < 1 or stride < 1:
    raise ConfigError("config.seg.crop and stride must be >= 0 (0 = automatic)")
  if crop != int(config.model.image_size):
    raise ConfigError(f"config.seg.crop={crop} must equal config.model.image_size="
                      f"{config.model.image_size} (the model runs on crops of its size)")
  try:
    scales = tuple(float(s) for s in str(seg.scales).split(","))
  except ValueError:
    raise ConfigError(f"config.seg.scales={seg.scales!r} must be comma-separated numbers, "
                      "e.g. 0.5,0.75,1.0,1.25,1.5,1.75") from None
  if not scales or min(scales) <= 0:
    raise ConfigError(f"config.seg.scales={seg.scales!r} must be positive")
  return {"mode": str(seg.mode), "crop": _pair(crop), "stride": _pair(stride),
          "scales": scales, "flip": bool(seg.flip)}


def make_eval_step(predict_fn: PredictFn, *, num_classes: int, ignore_index: int,
                   options: dict[str, Any]) -> Callable[[Any, dict], Array]:
  """jitted (args, batch) -> int32 confusion [K, K] over the mask == 1 rows."""

  def step(args, batch):
    forward = lambda x: split_logits(predict_fn(args, x), num_classes)[0]
    probs = inference.probabilities(forward, batch["image"],
                                    out_hw=tuple(batch["label"].shape[1:3]), **options)
    return metrics.confusion_matrix(probs.argmax(-1), batch["label"], num_classes,
                                    ignore_index=ignore_index, mask=batch["mask"])

  return jax.jit(step)


def evaluate(eval_step: Callable[[Any, dict], Array], args: Any, split, batch_size: int,
             put_batch: Callable[[dict], dict] = lambda b: b,
             rows: Optional[np.ndarray] = None) -> dict[str, Any]:
  """mIoU, pixel accuracy (fractions) and the confusion matrix over every example."""
  total: Optional[np.ndarray] = None
  count = 0.0
  for batch in split.batches(batch_size, shuffle=False, pad=True, rows=rows):
    global_batch = put_batch(batch)
    cm = np.asarray(jax.device_get(eval_step(args, global_batch)), np.int64)
    total = cm if total is None else total + cm
    count += float(np.asarray(jax.device_get(global_batch["mask"].sum())))
  if int(round(count)) != split.num_examples:
    raise RuntimeError(f"evaluated {count} examples of {split.name}, expected "
                       f"{split.num_examples}")
  out = metrics.scores(total)
  out["num_examples"] = int(round(count))
  out["confusion"] = total
  return out


_STEPS: dict[Any, Callable] = {}


def trainer_record(config: ml_collections.ConfigDict, trainer: Any, state: Any,
                   task: Any) -> dict[str, Any]:
  """test_miou / test_pixel_acc (and val_*) of the trainer's current state."""
  key = (id(trainer), config.seg.to_json())
  if key not in _STEPS:
    _STEPS.clear()
    _STEPS[key] = make_eval_step(trainer.predict, num_classes=task.num_classes,
                                 ignore_index=int(config.seg.ignore_index),
                                 options=inference_options(config))
  step, bs = _STEPS[key], int(config.train.eval_batch_size)
  record: dict[str, Any] = {}
  for prefix, split in (("test", task.test), ("val", task.val)):
    if split is None:
      continue
    s = evaluate(step, trainer.eval_args(state), split, bs, put_batch=trainer.put_batch,
                 rows=trainer.local_rows(bs))
    record[f"{prefix}_miou"] = s["miou"]
    record[f"{prefix}_pixel_acc"] = s["pixel_acc"]
    if prefix == "test":
      record["test_iou_per_class"] = [None if v != v else v for v in s["iou"]]  # NaN: absent
  return record
