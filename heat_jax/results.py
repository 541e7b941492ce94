"""The results schema (results.json), the adapter's run info and the summary line."""

from __future__ import annotations

from typing import Any

import ml_collections

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
  final = history[-1]   # the final evaluation holds every config.evals entry
  tested = [r for r in history if "test_top1" in r]   # evals may run at other epochs
  best = max(tested, key=lambda r: r["test_top1"])
  val_selected = None
  both = [r for r in tested if "val_top1" in r]
  if task.val is not None and both:
    val_selected = max(both, key=lambda r: r["val_top1"])["test_top1"]
  return {
      "task": task.name, "method": config.method.name, "seed": int(config.seed),
      "model": config.model.name, "checkpoint": base,
      "test_top1": final["test_top1"], "best_test_top1": best["test_top1"],
      "best_epoch": best["epoch"], "val_top1": final.get("val_top1"),
      "val_selected_test_top1": val_selected,
      "num_test_examples": task.test.num_examples,
      "trainable_params": trainable[0], "trainable_params_no_head": trainable[1],
      "total_params": trainable[2], "steps": steps,
      "wall_time_s": round(wall, 3), "train_time_s": round(train_time, 3),
      "images_per_s": round(images / train_time, 2) if train_time > 0 else None,
      "value_range": task.info.get("value_range"),
      "resize_method": task.info.get("resize_method"),
      "preprocess": preprocess_info(config, task), "class_names": task.class_names(),
      "method_info": method_info, "history": history,
      "config": config.to_dict(),
  }


def summary_line(results: dict[str, Any]) -> str:
  """The one line a finished run prints on stdout (run.py)."""
  return (f"{results['task']} / {results['method']}: test top-1 {results['test_top1']:.4f} "
          f"(best epoch {results['best_test_top1']:.4f}), trainable parameters "
          f"{results['trainable_params']:,}")
