"""Source `tfds`: prepared TFDS datasets read with `tfds.data_source` (array_record, no TF).

Training (and validation) images are decoded and resized once into memory; the test
split is streamed from the random-access source, decoded per batch in a thread pool.
Nothing is ever downloaded here: a dataset that is not prepared raises a one-line
`DataError` saying how to prepare it (`python -m heat_jax.data.prepare`, needs TF once).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from heat_jax.data import register_source
from heat_jax.data.base import Task
from heat_jax.data.labels import LABEL_FIELDS, LabelFn, get_label_fn
from heat_jax.data.preprocess import (check_resize_method, normalizer, resize_uint8,
                                      split_names)
from heat_jax.data.stream import Loader, make_splits
from heat_jax.data.vtab_tasks import ALIASES, MANUAL_INSTRUCTIONS, TASKS, VtabTask
from heat_jax.errors import ConfigError, DataError

_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def resolve_data_dir(data_dir: str = "") -> tuple[str, str]:
  """(directory, where it came from): config.data.data_dir, $TFDS_DATA_DIR or the default.

  `gs://` and other remote paths are passed through unchanged.
  """
  if data_dir:
    return data_dir, "config.data.data_dir"
  if os.environ.get("TFDS_DATA_DIR"):
    return os.environ["TFDS_DATA_DIR"], "$TFDS_DATA_DIR"
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets"), "the TFDS default"


def check_data_dir(data_dir: str, where: str, *, for_writing: bool = False) -> None:
  """ConfigError when a local data dir is a file, or (for writing) cannot be created or
  written. Remote paths (`gs://...`) are left to TFDS. Nothing is created here."""
  if "://" in data_dir:
    return
  path = os.path.abspath(os.path.expanduser(data_dir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"data dir {data_dir} (from {where}) is a file, not a directory; "
                      "point it at a directory")
  if not for_writing:
    return
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"data dir {data_dir} (from {where}) cannot be created: {existing} is "
                      "a file; pick another directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = ("is not writable" if existing == path
            else f"cannot be created ({existing} is not writable)")
    raise ConfigError(f"data dir {data_dir} (from {where}) {what}; pick a writable directory")


def prepare_hint(task: str, data_dir: str) -> str:
  """How to prepare a dataset, as a fragment of a one-line message."""
  cmd = f'pip install -e ".[tf]" && python -m heat_jax.data.prepare {task} --data_dir={data_dir}'
  name = ALIASES.get(task, task)
  if name in MANUAL_INSTRUCTIONS:
    cmd += f" --manual_dir=DIR after you {MANUAL_INSTRUCTIONS[name]}"
  return cmd


def not_prepared_message(tfds_name: str, task: str, data_dir: str, where: str) -> str:
  return (f"TFDS dataset {tfds_name} (task {task}) is not prepared in {data_dir} (from {where}); "
          f"prepare it once with TensorFlow: {prepare_hint(task, data_dir)}; or point "
          f"config.data.data_dir / $TFDS_DATA_DIR at a prepared array_record copy; or use "
          f"config.data.source=folder with config.data.folder_root=<root>/<split>/<class>/*.jpg")


def open_split(tfds_name: str, split: str, *, task: str, data_dir: str,
               where: str) -> Sequence[dict[str, Any]]:
  """A random-access source over a prepared split; DataError (never a download) otherwise."""
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"config.data.tfds_name={tfds_name!r}: "
                    f"{not_found_reason(tfds_name)}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise _diagnose(tfds_name, split, task, data_dir, where, e) from None


def not_found_reason(tfds_name: str) -> str:
  """Why TFDS found no builder for `name[/config][:version]` (a message fragment)."""
  import tensorflow_datasets as tfds
  base, _, version = tfds_name.partition(":")
  if version:
    try:
      tfds.builder_cls(base.split("/")[0])
      return (f"bad version {version!r}; write it like 3.*.* or 3.0.1 "
              f"(e.g. {base}:3.*.*), or leave it out")
    except Exception:  # pylint: disable=broad-except
      pass
  return (f"TFDS has no dataset {base.split('/')[0]!r}; use a name from "
          "tfds.list_builders(), as name[/config][:version]")


def _first_line(e: BaseException) -> str:
  """'ExcType: first line', without TFDS' 'Failed to construct dataset ...: ' preamble."""
  text = str(e).strip().splitlines()
  line = text[0] if text else ""
  if line.startswith("Failed to construct dataset") and '}": ' in line:
    line = line.split('}": ', 1)[1]
  return f"{type(e).__name__}: {line}"


def _diagnose(tfds_name: str, split: str, task: str, data_dir: str, where: str,
              error: BaseException) -> DataError:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    return DataError(f"cannot open TFDS dataset {tfds_name} in {data_dir}: {_first_line(e)}")
  if not builder.is_prepared():
    return DataError(not_prepared_message(tfds_name, task, data_dir, where))
  file_format = getattr(builder.info.file_format, "value", str(builder.info.file_format))
  if file_format not in _RANDOM_ACCESS_FORMATS:
    return DataError(f"TFDS dataset {tfds_name} in {builder.data_dir} was prepared as "
                     f"{file_format}, which has no random access; re-prepare it as array_record "
                     f"into a new directory with {prepare_hint(task, 'NEW_DIR')} and set "
                     f"config.data.data_dir=NEW_DIR")
  return DataError(f"cannot read split {split!r} of {tfds_name} from {builder.data_dir}: "
                   f"{_first_line(error)}; check config.data.*_split")


def raise_open_file_limit() -> None:
  """TFDS opens many files at once: lift the soft RLIMIT_NOFILE to the hard limit."""
  try:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
  except (ImportError, ValueError, OSError):
    pass


def make_loader(source: Sequence[dict[str, Any]], label_fn: LabelFn, *, image_size: int,
                resize_method: str, binary_image: bool, image_key: str = "image") -> Loader:
  """index -> (uint8 [S, S, 3] image, label) for one TFDS split."""

  def load(index: int) -> tuple[np.ndarray, int]:
    example = source[index]
    try:
      image = np.asarray(example[image_key])
      label = label_fn(example)
    except KeyError as e:   # features unknown up front (check_features had nothing to check)
      raise DataError(f"example {index} has no field {e.args[0]!r} (it has "
                      f"{sorted(example)}); check config.data.label_fn") from None
    if binary_image:   # dsprites: {0, 1} -> {0, 255}
      image = np.where(image > 0, 255, 0).astype(np.uint8)
    try:
      return resize_uint8(image, (image_size, image_size), resize_method), label
    except ValueError as e:   # not an [H, W(, C)] image
      raise DataError(f"example {index}: {e}; heat_jax reads [H, W, 1|3|4] images") from None

  return load


def check_carve(vt: VtabTask, splits: dict[str, str], info: Any) -> None:
  """Asserts the literal carve offsets against the prepared split sizes (VTAB defaults only)."""
  if vt.carve is None or info is None:
    return
  sizes = getattr(info, "splits", {}) or {}
  if vt.carve.base not in sizes:
    return   # no split metadata (e.g. mock data): nothing to check
  n = sizes[vt.carve.base].num_examples
  val, test = vt.carve.splits(n)
  used = {part for split in splits.values() for part in split.split("+")}
  wrong = [f"{key} should be {computed!r}, not {literal!r}"
           for key, literal, computed in (("val200", vt.val200, val), ("test", vt.test, test))
           if computed is not None and literal in used and literal != computed]
  if wrong:
    raise DataError(f"{vt.name}: the prepared {vt.carve.base} split has {n} examples, so by "
                    f"task_adaptation's rule {'; '.join(wrong)}; set config.data.*_split "
                    "explicitly to the corrected strings")


def check_features(info: Any, label_fn: str, tfds_name: str, image_key: str = "image") -> None:
  """ConfigError when the dataset lacks the image or a field the label function reads."""
  features = getattr(info, "features", None)
  if features is None or not hasattr(features, "keys"):
    return
  have = set(features.keys())
  if image_key not in have:
    raise ConfigError(f"TFDS dataset {tfds_name} has no {image_key!r} feature (it has "
                      f"{sorted(have)}); heat_jax reads image classification datasets")
  missing = [f for f in LABEL_FIELDS.get(label_fn, ()) if f not in have]
  if missing:
    raise ConfigError(f"config.data.label_fn={label_fn!r} reads {missing[0]!r}, which TFDS "
                      f"dataset {tfds_name} lacks (its features: {sorted(have)}); pick a "
                      "label_fn for this dataset")


def _num_classes(data_config: Any, info: Any) -> int:
  configured = int(data_config.num_classes)
  features = getattr(info, "features", None)
  known = None
  if data_config.label_fn == "label" and features is not None and "label" in features:
    known = getattr(features["label"], "num_classes", None)
  if configured and known and configured != known:
    raise ConfigError(f"config.data.num_classes={configured} but {data_config.tfds_name} has "
                      f"{known} labels; fix config.data.num_classes (or set it to 0)")
  if not (configured or known):
    raise ConfigError("config.data.num_classes is 0 and cannot be read from the dataset; "
                      "set config.data.num_classes")
  return configured or int(known)


def _class_names(data_config: Any, info: Any) -> Optional[list[str]]:
  """The ClassLabel names of the `label` feature (None for derived labels)."""
  features = getattr(info, "features", None)
  if data_config.label_fn != "label" or features is None or "label" not in features:
    return None
  names = getattr(features["label"], "names", None)
  return [str(n) for n in names] if names else None


def build_tfds_task(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """Builds a `Task` from a prepared TFDS dataset (`config.data.source = 'tfds'`)."""
  task_name = ALIASES.get(data_config.task, data_config.task)
  vt: Optional[VtabTask] = TASKS.get(task_name)
  tfds_name = data_config.tfds_name or (vt.tfds_name if vt else "")
  if not tfds_name:
    raise ConfigError("config.data.tfds_name is empty; set it (e.g. 'dtd:3.*.*') or use "
                      "configs/vtab.py:<task>")
  method = check_resize_method(data_config.get("resize_method", "bicubic"))
  splits = {r: s for r, s in split_names(data_config, "a TFDS split string such as "
                                          "'train[:800]'").items() if s}
  label_fn = get_label_fn(data_config.label_fn)
  data_dir, where = resolve_data_dir(data_config.data_dir)
  check_data_dir(data_dir, where)
  raise_open_file_limit()
  task_label = task_name or tfds_name.split(":")[0]
  sources = {role: open_split(tfds_name, split, task=task_label, data_dir=data_dir, where=where)
             for role, split in splits.items()}
  for role, source in sources.items():
    try:
      size = len(source)
    except ValueError:   # a reversed slice such as test[5:2]
      size = 0
    if size <= 0:
      raise DataError(f"split {splits[role]!r} of {tfds_name} in {data_dir} is empty; check "
                      f"config.data.{role}_split")
  info = getattr(sources["train"], "dataset_info", None)
  check_features(info, data_config.label_fn, tfds_name)
  default_data = vt is not None and tfds_name == vt.tfds_name   # the VTAB table's dataset
  if default_data:
    check_carve(vt, splits, info)
  num_classes = _num_classes(data_config, info)
  normalize = normalizer(value_range)
  binary = default_data and vt.binary_image
  made = make_splits(
      task_label, splits, {r: len(s) for r, s in sources.items()},
      {r: make_loader(s, label_fn, image_size=image_size, resize_method=method,
                      binary_image=binary) for r, s in sources.items()},
      normalize, num_classes=num_classes)
  logging.info("tfds task %s: %s", task_label,
               {r: (splits[r], s.num_examples) for r, s in made.items()})
  return Task(
      name=task_label, num_classes=num_classes, train=made["train"], test=made["test"],
      val=made.get("val"),
      info={"source": "tfds", "tfds_name": tfds_name, "data_dir": data_dir,
            "tfds_version": str(getattr(info, "version", "")),
            "splits": splits,
            "num_examples": {r: s.num_examples for r, s in made.items()},
            "label_fn": data_config.label_fn, "group": vt.group if vt else "",
            "class_names": _class_names(data_config, info),
            "value_range": value_range, "resize_method": method})


register_source("tfds", build_tfds_task)
