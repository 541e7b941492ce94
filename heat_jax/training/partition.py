"""Trainable / frozen partition of a parameter tree from a method's mask.

A *mask tree* mirrors the parameter tree; each leaf is either a Python/NumPy bool
(whole leaf trainable or frozen) or a NumPy bool array that broadcasts against the leaf
(element-level: e.g. `(1, heads, 1)` for a q/k/v kernel selects whole heads).

Training differentiates only the trainable sub-tree (leaves with any True element);
the frozen sub-tree is closed over, so frozen weights cost no gradient memory.
Element masks inside trainable leaves are enforced by the optimizer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np
from flax import traverse_util

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


def split(params: Params, mask: FlatMask) -> tuple[Params, Params]:
  """(trainable, frozen) nested trees; a leaf is trainable if any element is."""
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if any_true(mask[k])}
  frozen = {k: v for k, v in flat.items() if not any_true(mask[k])}
  return unflatten(trainable), unflatten(frozen)


def merge(trainable: Params, frozen: Params) -> Params:
  """Inverse of `split` (works on traced values inside jit)."""
  return unflatten({**flatten(frozen), **flatten(trainable)})


def element_masks(trainable: Params, mask: FlatMask) -> Params:
  """Float 0/1 masks for the trainable tree (a scalar 1.0 where the leaf is whole)."""
  out = {}
  for k, v in flatten(trainable).items():
    m = mask[k]
    out[k] = (np.asarray(m, np.float32) if is_partial(m) else np.float32(1.0))
  return unflatten(out)


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
