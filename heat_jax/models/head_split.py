"""A kernel whose trainable part is a few slices along one axis (selected heads).

The training engine hands an attention projection a `HeadSplit` in place of its
kernel when a method trains only some heads of it: `full` is the frozen kernel (its
selected slices are stale and never read), `part` holds the trainable slices
`idx` of `axis`. The projection then computes the frozen heads and the trained heads
as two matmuls, so the weight gradient (and the optimizer state) covers only the
selected heads. Scattering `part` into `full` before one matmul would not do that:
XLA would form the whole kernel's gradient, then gather from it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HeadSplit:
  """`full` with its slices `idx` (sorted, static) along `axis` replaced by `part`."""

  full: Array
  part: Array
  idx: tuple[int, ...]
  axis: int

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.full.shape)

  @property
  def rest(self) -> tuple[int, ...]:
    """The frozen slices of `axis`, sorted."""
    chosen = set(self.idx)
    return tuple(i for i in range(self.full.shape[self.axis]) if i not in chosen)

  def merged(self) -> Array:
    """The whole kernel (a scatter; fine where no weight gradient is formed from it)."""
    return scatter(self.full, self.part, self.idx, self.axis)


jax.tree_util.register_dataclass(HeadSplit, data_fields=["full", "part"],
                                 meta_fields=["idx", "axis"])


def scatter(full: Array, part: Array, idx: Sequence[int], axis: int) -> Array:
  """`full` with slices `idx` along `axis` set to `part`."""
  index = [slice(None)] * full.ndim
  index[axis] = np.asarray(idx, np.int32)
  return full.at[tuple(index)].set(part.astype(full.dtype))


def take(x: Array, idx: Sequence[int], axis: int) -> Array:
  """Static slices `idx` of `axis` as a concatenation of contiguous runs (no gather)."""
  axis = axis % x.ndim
  pieces = [jax.lax.slice_in_dim(x, a, b, axis=axis) for a, b in _runs(idx)]
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=axis)


def interleave(a: Array, a_idx: Sequence[int], b: Array, b_idx: Sequence[int],
               axis: int) -> Array:
  """The array whose slices `a_idx` along `axis` are `a` and `b_idx` are `b` (in order)."""
  axis = axis % a.ndim
  source = {i: (0, n) for n, i in enumerate(a_idx)}
  source.update({i: (1, n) for n, i in enumerate(b_idx)})
  pieces, arrays = [], (a, b)
  position = 0
  total = len(source)
  while position < total:
    which, start = source[position]
    stop = start + 1
    while position + (stop - start) < total and source[position + stop - start] == (
        which, stop):
      stop += 1
    pieces.append(jax.lax.slice_in_dim(arrays[which], start, stop, axis=axis))
    position += stop - start
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=axis)


def _runs(idx: Sequence[int]) -> list[tuple[int, int]]:
  """Sorted indices as [start, stop) runs of consecutive values."""
  runs: list[tuple[int, int]] = []
  for i in idx:
    if runs and runs[-1][1] == i:
      runs[-1] = (runs[-1][0], i + 1)
    else:
      runs.append((i, i + 1))
  return runs
