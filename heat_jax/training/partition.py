"""Trainable / frozen partition of a parameter tree from a method's mask.

A *mask tree* mirrors the parameter tree; each leaf is either a Python/NumPy bool
(whole leaf trainable or frozen) or a NumPy bool array that broadcasts against the leaf
(element-level: e.g. `(1, heads, 1)` for a q/k/v kernel selects whole heads).

Training differentiates only the trainable sub-tree; the frozen sub-tree is an
argument that is never differentiated, so frozen weights cost no gradient memory. A
mask that selects slices along one axis (heads) makes only those slices trainable
arrays (`Partition`); any other partial mask trains its whole leaf, and the optimizer
enforces the element mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
from flax import traverse_util

from heat_jax.models import head_split
from heat_jax.models.head_split import HeadSplit

Params = dict[str, Any]
FlatMask = dict[str, Any]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def mask_from_predicate(params: Params, predicate: Callable[[str, Any], bool]) -> FlatMask:
  """Leaf-level mask: True where `predicate('/'-joined path, leaf)` holds."""
  return {k: bool(predicate(k, v)) for k, v in flatten(params).items()}


def union(*masks: FlatMask) -> FlatMask:
  """Element-wise OR of flat masks over the same keys."""
  keys = masks[0].keys()
  out = {}
  for k in keys:
    value = masks[0][k]
    for m in masks[1:]:
      value = np.logical_or(value, m[k])
    out[k] = value if isinstance(value, np.ndarray) and value.ndim else bool(value)
  return out


def is_partial(mask_leaf: Any) -> bool:
  """True when the leaf is neither fully frozen nor fully trainable."""
  arr = np.asarray(mask_leaf, bool)
  return arr.ndim > 0 and bool(arr.any()) and not bool(arr.all())


def any_true(mask_leaf: Any) -> bool:
  return bool(np.asarray(mask_leaf, bool).any())


def check_mask(params: Params, mask: FlatMask) -> None:
  flat = flatten(params)
  if set(flat) != set(mask):
    missing = sorted(set(flat) - set(mask))[:5]
    extra = sorted(set(mask) - set(flat))[:5]
    raise ValueError(f"mask does not cover the parameters: missing {missing}, extra {extra}")
  for k, m in mask.items():
    arr = np.asarray(m, bool)
    try:
      np.broadcast_shapes(arr.shape, np.shape(flat[k]))
    except ValueError:
      raise ValueError(f"mask for {k} has shape {arr.shape}, which does not broadcast "
                       f"to {np.shape(flat[k])}") from None


@dataclasses.dataclass(frozen=True)
class Slices:
  """A leaf trained as its slices `idx` (sorted) along `axis`."""

  axis: int
  idx: tuple[int, ...]


def slices_of(mask_leaf: Any, shape: tuple[int, ...]) -> Optional[Slices]:
  """The slices a partial mask selects when it varies along one axis only, else None.

  E.g. a q/k/v kernel mask `(1, H, 1)` selects heads: `Slices(1, selected heads)`.
  """
  if not is_partial(mask_leaf):
    return None
  m = np.asarray(mask_leaf, bool)
  m = m.reshape((1,) * (len(shape) - m.ndim) + m.shape)
  varying = [a for a in range(m.ndim) if m.shape[a] > 1]
  for axis in varying:
    others = tuple(a for a in range(m.ndim) if a != axis)
    along = np.any(m, axis=others, keepdims=True)
    if np.array_equal(np.broadcast_to(along, m.shape), m):
      idx = np.nonzero(along.reshape(-1))[0]
      return Slices(axis, tuple(int(i) for i in idx))
  return None


class Partition:
  """How every parameter is trained, from a method's mask.

  Each leaf is frozen, whole (every element trainable), *sliced* (the mask selects
  slices along one axis, e.g. heads: only those slices are trainable arrays, so
  gradients and optimizer state scale with the selection) or *masked* (any other
  partial mask: the whole leaf is trainable and the optimizer's element mask keeps the
  masked-out elements fixed).

  The trainable tree holds whole leaves, slices and masked leaves; the frozen tree
  holds frozen leaves and the full value of sliced ones (their unselected slices).
  Sliced leaves in `split_keys` reach the model as a `HeadSplit` (see
  `heat_jax.models.head_split`), others are scattered into one array.
  """

  def __init__(self, params: Params, mask: FlatMask, split_keys: Iterable[str] = ()):
    check_mask(params, mask)
    flat = flatten(params)
    self.trainable_keys = [k for k in flat if any_true(mask[k])]
    self.slices: dict[str, Slices] = {}
    self.masked: dict[str, np.ndarray] = {}
    for k in self.trainable_keys:
      sl = slices_of(mask[k], np.shape(flat[k]))
      if sl is not None:
        self.slices[k] = sl
      elif is_partial(mask[k]):
        self.masked[k] = np.asarray(mask[k], np.float32)
    self.split_keys = frozenset(k for k in split_keys if k in self.slices)

  def split(self, params: Params) -> tuple[Params, Params]:
    """(trainable, frozen) nested trees of host arrays."""
    flat = flatten(params)
    trainable = {}
    for k in self.trainable_keys:
      sl = self.slices.get(k)
      trainable[k] = flat[k] if sl is None else np.take(np.asarray(flat[k]), sl.idx, sl.axis)
    frozen = {k: v for k, v in flat.items() if k not in trainable or k in self.slices}
    return unflatten(trainable), unflatten(frozen)

  def merge(self, trainable: Params, frozen: Params) -> Params:
    """The complete parameter tree (works on traced values inside jit)."""
    return self._merge(trainable, frozen, split=False)

  def model_params(self, trainable: Params, frozen: Params) -> Params:
    """The tree the model is applied to in training (HeadSplit at `split_keys`)."""
    return self._merge(trainable, frozen, split=True)

  def _merge(self, trainable: Params, frozen: Params, *, split: bool) -> Params:
    out = flatten(frozen)
    for k, v in flatten(trainable).items():
      sl = self.slices.get(k)
      if sl is None:
        out[k] = v
      elif split and k in self.split_keys:
        out[k] = HeadSplit(out[k], v, sl.idx, sl.axis)
      else:
        out[k] = head_split.scatter(out[k], v, sl.idx, sl.axis)
    return unflatten(out)

  def element_masks(self, trainable: Params) -> Params:
    """Float 0/1 masks for the trainable tree (a scalar 1.0 where the leaf trains whole)."""
    return unflatten({k: self.masked.get(k, np.float32(1.0)) for k in flatten(trainable)})


def count(params: Params, mask: FlatMask, *, exclude: Optional[Callable[[str], bool]] = None
          ) -> int:
  """Exact number of trainable scalars (mask broadcast over each leaf)."""
  total = 0
  for k, v in flatten(params).items():
    if exclude is not None and exclude(k):
      continue
    m = np.asarray(mask[k], bool)
    total += int(np.broadcast_to(m, np.shape(v)).sum())
  return total


def is_head(path: str) -> bool:
  """The classifier head (the `head` subtree)."""
  return path.split("/")[0] == "head"
