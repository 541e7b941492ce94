"""Resizing of 2-D parameter grids (position embeddings, relative-position tables).

Two families, because the reference implementations disagree:
  * `zoom`: scipy.ndimage.zoom(order=1), corners aligned (vit_jax, big_vision);
  * `bilinear` / `bicubic`: PyTorch `F.interpolate(..., align_corners=False,
    antialias=False)` semantics (timm), reimplemented in numpy as separable weight
    matrices, bicubic with the Keys coefficient A = -0.75 as torch uses.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

METHODS = ("zoom", "bilinear", "bicubic")


def resize_grid(grid: np.ndarray, new_hw: tuple[int, int], method: str = "zoom") -> np.ndarray:
  """Resizes a [H, W, C] grid to [new_h, new_w, C] in float32."""
  grid = np.asarray(grid, np.float32)
  h, w, _ = grid.shape
  nh, nw = new_hw
  if (h, w) == (nh, nw):
    return grid
  if method == "zoom":
    return scipy.ndimage.zoom(grid, (nh / h, nw / w, 1), order=1).astype(np.float32)
  if method in ("bilinear", "bicubic"):
    wh = torch_interp_matrix(h, nh, method)
    ww = torch_interp_matrix(w, nw, method)
    out = np.einsum("ih,hwc->iwc", wh, grid.astype(np.float64))
    out = np.einsum("jw,iwc->ijc", ww, out)
    return out.astype(np.float32)
  raise ValueError(f"unknown resize method {method!r}; use one of {METHODS}")


def torch_interp_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """[out, in] weights reproducing torch's 1-D interpolation (align_corners=False)."""
  weights = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    if method == "bilinear":
      src = max(src, 0.0)
      i0 = min(int(np.floor(src)), in_size - 1)
      i1 = min(i0 + 1, in_size - 1)
      lam = src - i0
      weights[i, i0] += 1.0 - lam
      weights[i, i1] += lam
    else:
      i0 = int(np.floor(src))
      t = src - i0
      for offset, coeff in zip((-1, 0, 1, 2), _cubic_coefficients(t)):
        weights[i, min(max(i0 + offset, 0), in_size - 1)] += coeff
  return weights


def _cubic_coefficients(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)
