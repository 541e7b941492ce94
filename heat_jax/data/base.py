"""What every data source produces: a `Task` with `Split`s that yield batches.

A batch is a dict of numpy arrays: `image` float32 [B, H, W, 3] (already resized and
normalised), `label` int32 [B] and `mask` float32 [B] (0 for padding rows, so that
evaluation counts every example exactly once).

In a multi-process run every process asks for its `rows` of each global batch (see
`heat_jax.distributed.local_rows`) and only those examples are decoded; the global
batches themselves (order, padding) are the same in every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np

Batch = dict[str, np.ndarray]


class Split(Protocol):
  """A finite, ordered split that yields batches."""

  name: str
  num_examples: int

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, drop_remainder: bool = False, pad: bool = False,
              rows: Optional[np.ndarray] = None) -> Iterator[Batch]:
    """Yields batches; `pad` fills the last batch to `batch_size` with mask 0.

    `rows` (positions in each global batch, e.g. one process's share) yields only those
    rows of every batch; needs `pad` or `drop_remainder` so that all shares are full.
    """
    ...


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
  """Example order for one epoch: a permutation that depends only on (seed, epoch)."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                  drop_remainder: bool) -> Iterator[np.ndarray]:
  order = epoch_order(n, shuffle=shuffle, seed=seed, epoch=epoch)
  stop = (n // batch_size) * batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    yield order[start:start + batch_size]


def select_rows(idx: np.ndarray, batch_size: int, rows: Optional[np.ndarray],
                pad: bool) -> tuple[np.ndarray, int]:
  """(example indices, batch length) of the `rows` positions of one global batch.

  Padding positions (past the real examples of a short last batch) come last in every
  share, so the share is its real examples padded to `len(rows)`.
  """
  if rows is None:
    return idx, batch_size
  if len(idx) < batch_size and not pad:
    raise ValueError("a share (rows) of a short last batch needs pad=True or "
                     "drop_remainder=True")
  rows = np.asarray(rows)
  return idx[rows[rows < len(idx)]], len(rows)


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads every array of a batch along axis 0 to `batch_size`; mask marks real rows."""
  n = len(batch["label"])
  mask = np.ones((n,), np.float32) if "mask" not in batch else batch["mask"]
  out = {}
  for k, v in {**batch, "mask": mask}.items():
    if n < batch_size:
      v = np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
    out[k] = v
  return out


def make_batch(images: np.ndarray, labels: np.ndarray,
               normalize: Callable[[np.ndarray], np.ndarray], batch_size: int,
               pad: bool) -> Batch:
  """The batch dict of uint8 images and labels; `pad` fills it to `batch_size` (mask 0)."""
  batch = {"image": normalize(images), "label": labels,
           "mask": np.ones((len(labels),), np.float32)}
  return pad_batch(batch, batch_size) if pad else batch


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory as uint8 images (already resized) and int labels.

  `normalize` maps a uint8 batch [B, H, W, 3] to float32 in the model's value range.
  """

  name: str
  images: np.ndarray
  labels: np.ndarray
  normalize: Callable[[np.ndarray], np.ndarray]

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
    self.labels = np.asarray(self.labels, np.int32)

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, drop_remainder: bool = False, pad: bool = False,
              rows: Optional[np.ndarray] = None) -> Iterator[Batch]:
    for idx in batch_indices(self.num_examples, batch_size, shuffle=shuffle, seed=seed,
                             epoch=epoch, drop_remainder=drop_remainder):
      idx, size = select_rows(idx, batch_size, rows, pad)
      yield make_batch(self.images[idx], self.labels[idx], self.normalize, size, pad)


@dataclasses.dataclass
class Task:
  """A classification task: train / optional val / test splits and metadata.

  `info['class_names']`, when a source knows them (class folders, TFDS ClassLabel
  names, synthetic tasks), names label i; `class_names()` falls back to indices.
  `info['val_in_train']` is True when the val examples are also training examples
  (e.g. the final protocol's train800val200 with val200 as val): `held_out_val()` is
  then None, so no number measured on training images is ever called "val".
  """

  name: str
  num_classes: int
  train: Split
  test: Split
  val: Optional[Split] = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def held_out_val(self) -> Optional[Split]:
    """The val split when it is held out from training, else None."""
    return None if self.info.get("val_in_train", False) else self.val

  def class_names(self) -> list[str]:
    """Label i's name: the source's names when it has one per class, else str(i)."""
    names = self.info.get("class_names")
    if names is not None and len(names) == self.num_classes:
      return [str(n) for n in names]
    return [str(i) for i in range(self.num_classes)]
