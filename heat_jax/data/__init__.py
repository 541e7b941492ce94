"""Data: `build_task(data_config, image_size=..., auto_value_range=...) -> Task`.

Sources register themselves by name (`config.data.source`): `tfds`, `folder`,
`synthetic`, `real` (images shipped in packages). Adding a source is one module that
calls `register_source`.
"""

from __future__ import annotations

import importlib
import numbers
from typing import Any, Callable

from heat_jax.data.base import ArraySplit, Batch, Split, Task
from heat_jax.data.splits import splits_overlap
from heat_jax.errors import ConfigError

_SOURCES: dict[str, Callable[..., Task]] = {}
_SOURCE_MODULES = {"tfds": "heat_jax.data.tfds_source", "folder": "heat_jax.data.folder",
                   "synthetic": "heat_jax.data.synthetic",
                   "seg_synthetic": "heat_jax.data.seg_synthetic",
                   "ade20k": "heat_jax.data.ade20k",
                   "real": "heat_jax.data.real_images"}


def register_source(name: str, builder: Callable[..., Task]) -> None:
  """Registers `builder(data_config, *, image_size, value_range) -> Task`."""
  _SOURCES[name] = builder


def _is_count(value: Any, *, minimum: int) -> bool:
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= minimum)


def check_config(data_config: Any, *, auto_value_range: str = "minus1_1") -> str:
  """Cheap checks of `config.data` shared by every source (no files read); returns the
  resolved value range (`auto` -> `auto_value_range`, the model's own: see
  `heat_jax.models.model_info`). ConfigError on an unknown source, value range,
  resize method or a negative class count."""
  from heat_jax.data.preprocess import check_resize_method, resolve_value_range
  source = data_config.source
  if source not in _SOURCES and source in _SOURCE_MODULES:
    importlib.import_module(_SOURCE_MODULES[source])
  if source not in _SOURCES:
    raise ConfigError(f"config.data.source={source!r} is not one of "
                      f"{sorted(set(_SOURCES) | set(_SOURCE_MODULES))}")
  check_resize_method(data_config.get("resize_method", "bicubic"))
  num_classes = data_config.get("num_classes", 0)
  if not _is_count(num_classes, minimum=0):
    raise ConfigError(f"config.data.num_classes={num_classes!r} must be an integer >= 0 "
                      "(0 = read it from the data)")
  return resolve_value_range(data_config.value_range, auto_value_range)


def build_task(data_config: Any, *, image_size: int,
               auto_value_range: str = "minus1_1") -> Task:
  """Builds the task described by `config.data` for a model's image size and value
  range (what `value_range='auto'` means for it)."""
  value_range = check_config(data_config, auto_value_range=auto_value_range)
  if not _is_count(image_size, minimum=1):
    raise ConfigError(f"image size {image_size!r} must be a positive integer; check "
                      "config.model.image_size")
  task = _SOURCES[data_config.source](data_config, image_size=image_size,
                                      value_range=value_range)
  if "val_in_train" not in task.info:   # sources may know better (synthetic does)
    task.info["val_in_train"] = task.val is not None and splits_overlap(
        str(data_config.get("train_split", "") or ""),
        str(data_config.get("val_split", "") or ""))
  task.info.setdefault("value_range", value_range)
  task.info.setdefault("resize_method", data_config.get("resize_method", "bicubic"))
  return task


__all__ = ["ArraySplit", "Batch", "Split", "Task", "build_task", "check_config",
           "register_source"]
