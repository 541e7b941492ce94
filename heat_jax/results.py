"""The results schema (results.json), the adapter's run info and the summary line."""

from __future__ import annotations

from typing import Any

import ml_collections

from heat_jax import provenance
from heat_jax.data.base import Task

RESULTS_FILE = "results.json"


def preprocess_info(config: ml_collections.ConfigDict, task: Task) -> dict[str, Any]:
  """How images were prepared for the model (what `heat_jax.predict` repeats)."""
  return {"image_size": int(config.model.image_size),
          "value_range": task.info.get("value_range"),
          "resize_method": task.info.get("resize_method")}


def adapter_info(config: ml_collections.ConfigDict, task: Task, method: Any) -> dict[str, Any]:
  """The method, its options and state, the task and preprocessing, for the adapter files."""
  blocks = type(method).default_config()
  return {"method": config.method.name,
          "method_config": {b: config[b].to_dict() for b in blocks},
          "method_state": method.resume_state(),   # e.g. HEAT's head selection
          "task": {"name": task.name, "num_classes": task.num_classes,
                   "source": task.info.get("source")},
          "class_names": task.class_names(),
          "preprocess": preprocess_info(config, task)}


def summarize(config, task, history: list[dict], method_info: dict, *, base: dict,
              trainable: tuple[int, int, int], wall: float, train_time: float,
              images: int, steps: int) -> dict[str, Any]:
  """The results.json dict."""
  from heat_jax.tasks import get_task_kind   # noqa: PLC0415
  m = get_task_kind(config.get("task_kind", "classification")).metric_names[0]
  final = history[-1]   # the protocol's number: no epoch is selected, on test or val
  others = {k: v for k, v in final.items() if k not in ("epoch", "step")
            and k not in (f"test_{m}", f"val_{m}")}   # e.g. test_pixel_acc
  return {
      "task": task.name, "method": config.method.name, "seed": int(config.seed),
      "model": config.model.name, "checkpoint": base, "primary_metric": m,
      f"test_{m}": final[f"test_{m}"], "selection": "final epoch",
      f"val_{m}": final.get(f"val_{m}"), "val_held_out": task.held_out_val() is not None,
      **(others if m != "top1" else {}),
      **({"palette": task.info["palette"]} if "palette" in task.info else {}),
      "num_classes": int(task.num_classes), "num_test_examples": task.test.num_examples,
      "trainable_params": trainable[0], "trainable_params_no_head": trainable[1],
      "total_params": trainable[2], "steps": steps,
      "wall_time_s": round(wall, 3), "train_time_s": round(train_time, 3),
      "images_per_s": round(images / train_time, 2) if train_time > 0 else None,
      "value_range": task.info.get("value_range"),
      "resize_method": task.info.get("resize_method"),
      "preprocess": preprocess_info(config, task), "class_names": task.class_names(),
      "normalization": provenance.normalization(task.info.get("value_range")),
      "method_info": method_info, "history": history,
      "config": config.to_dict(),
  }


def summary_line(results: dict[str, Any]) -> str:
  """The one line a finished run prints on stdout (run.py)."""
  m = results.get("primary_metric", "top1")
  name = {"top1": "top-1", "miou": "mIoU"}.get(m, m)
  return (f"{results['task']} / {results['method']}: test {name} "
          f"{results[f'test_{m}']:.4f} (final epoch), "
          f"trainable parameters {results['trainable_params']:,}")
