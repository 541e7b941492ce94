"""Splits backed by a per-example loader: streamed batches, or loaded once into memory.

A loader maps an example index to `(uint8 image [S, S, 3], int label)`; it decodes and
resizes, so it is called from a small thread pool (PIL releases the GIL).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator, Optional

import numpy as np

from heat_jax.data.base import ArraySplit, Batch, batch_indices, make_batch, select_rows
from heat_jax.errors import DataError

Loader = Callable[[int], tuple[np.ndarray, int]]
Normalizer = Callable[[np.ndarray], np.ndarray]
MAX_IN_MEMORY = 10_000   # larger train/val splits are streamed instead of cached


def default_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def check_labels(labels: np.ndarray, num_classes: int, where: str,
                 indices: Optional[np.ndarray] = None) -> None:
  """DataError when a label lies outside [0, num_classes)."""
  labels = np.asarray(labels)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0] if indices is None else np.asarray(indices)[bad[0]])
    raise DataError(f"{where}: example {i} has label {int(labels[bad[0]])}, outside "
                    f"[0, {num_classes}) ({bad.size} such labels in this batch); check "
                    f"config.data.num_classes and config.data.label_fn")


def _load_many(load: Loader, indices: np.ndarray,
               pool: Optional[concurrent.futures.Executor]) -> tuple[np.ndarray, np.ndarray]:
  items = list(pool.map(load, indices.tolist())) if pool else [load(int(i)) for i in indices]
  return _stack(items)


def _stack(items: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
  images = np.stack([im for im, _ in items]) if items else np.zeros((0, 0, 0, 3), np.uint8)
  return images, np.asarray([lab for _, lab in items], np.int32)


class StreamSplit:
  """A split read example by example on every pass (for large test splits).

  Same batching contract as `ArraySplit`; with `pad=True` every example is yielded
  exactly once and the padding rows have mask 0. `prefetch` batches are decoded ahead.
  """

  def __init__(self, name: str, num_examples: int, load: Loader, normalize: Normalizer, *,
               num_classes: int, workers: Optional[int] = None, prefetch: int = 2):
    self.name = name
    self.num_examples = int(num_examples)
    self.load = load
    self.normalize = normalize
    self.num_classes = num_classes
    self.workers = default_workers() if workers is None else workers
    self.prefetch = max(1, prefetch)

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, drop_remainder: bool = False, pad: bool = False,
              rows: Optional[np.ndarray] = None) -> Iterator[Batch]:
    # With `rows` only this process's share of every batch is decoded.
    order = (select_rows(idx, batch_size, rows, pad)[0]
             for idx in batch_indices(self.num_examples, batch_size, shuffle=shuffle,
                                      seed=seed, epoch=epoch,
                                      drop_remainder=drop_remainder))
    batch_size = batch_size if rows is None else len(rows)
    if self.workers <= 0:
      for idx in order:
        yield self._batch(idx, *_load_many(self.load, idx, None), batch_size, pad)
      return
    pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
    pending: collections.deque = collections.deque()
    try:
      for idx in order:
        pending.append((idx, [pool.submit(self.load, int(i)) for i in idx]))
        if len(pending) > self.prefetch:
          yield self._finish(*pending.popleft(), batch_size, pad)
      while pending:
        yield self._finish(*pending.popleft(), batch_size, pad)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def _finish(self, idx: np.ndarray, futures: list, batch_size: int, pad: bool) -> Batch:
    return self._batch(idx, *_stack([f.result() for f in futures]), batch_size, pad)

  def _batch(self, idx: np.ndarray, images: np.ndarray, labels: np.ndarray,
             batch_size: int, pad: bool) -> Batch:
    check_labels(labels, self.num_classes, self.name, idx)
    if not len(idx):  # a process's share of a short last batch can be all padding
      images = np.zeros((0, *self._image_shape()), np.uint8)
    return make_batch(images, labels, self.normalize, batch_size, pad)

  def _image_shape(self) -> tuple[int, ...]:
    if not hasattr(self, "_shape"):
      self._shape = tuple(np.shape(self.load(0)[0]))
    return self._shape


def load_in_memory(name: str, num_examples: int, load: Loader, normalize: Normalizer, *,
                   num_classes: int, workers: Optional[int] = None) -> ArraySplit:
  """Decodes and resizes every example once into a uint8 `ArraySplit`."""
  workers = default_workers() if workers is None else workers
  indices = np.arange(int(num_examples))
  if workers <= 0:
    images, labels = _load_many(load, indices, None)
  else:
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
      images, labels = _load_many(load, indices, pool)
  check_labels(labels, num_classes, name)
  return ArraySplit(name, images, labels, normalize)


def held_in_memory(role: str, num_examples: int) -> bool:
  """Whether `make_splits` decodes a split once into memory (else it streams it)."""
  return role != "test" and num_examples <= MAX_IN_MEMORY


def make_splits(task_name: str, splits: dict[str, str], sizes: dict[str, int],
                loaders: dict[str, Loader], normalize: Normalizer, *,
                num_classes: int) -> dict:
  """One split per role: train/val in memory up to MAX_IN_MEMORY examples, test streamed;
  a role whose split string repeats an earlier one's (tune: val == test) shares its split."""
  made: dict = {}
  for role, expr in splits.items():
    same = next((r for r in made if splits[r] == expr), None)
    if same is not None:
      made[role] = made[same]
      continue
    name, n = f"{task_name}:{expr}", sizes[role]
    if held_in_memory(role, n):
      made[role] = load_in_memory(name, n, loaders[role], normalize, num_classes=num_classes)
    else:
      made[role] = StreamSplit(name, n, loaders[role], normalize, num_classes=num_classes)
  return made
