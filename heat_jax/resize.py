"""Resizing of 2-D parameter grids (position embeddings, relative-position tables).

Two families, because the reference implementations disagree:
  * `zoom`: scipy.ndimage.zoom(order=1), corners aligned (vit_jax, big_vision);
  * `bilinear` / `bicubic`: PyTorch `F.interpolate(..., align_corners=False,
    antialias=False)` semantics, reimplemented in numpy as separable weight
    matrices, bicubic with the Keys coefficient A = -0.75 as torch uses (Hugging
    Face Dinov2 / ViT at run time, timm's Swin tables);
  * `bicubic_aa`: `F.interpolate(mode='bicubic', antialias=True)`: PIL's cubic
    filter (A = -0.5) stretched by the downscale factor, weights renormalised at the
    borders (what timm does to a position embedding on load);
  * `bicubic_legacy_hf`: `F.interpolate(scale_factor=(n + 0.1) / N, mode='bicubic')`,
    how Hugging Face Dinov2 interpolated before it passed `size` (older exports).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

METHODS = ("zoom", "bilinear", "bicubic", "bicubic_aa", "bicubic_legacy_hf")


def resize_grid(grid: np.ndarray, new_hw: tuple[int, int], method: str = "zoom") -> np.ndarray:
  """Resizes a [H, W, C] grid to [new_h, new_w, C] in float32."""
  grid = np.asarray(grid, np.float32)
  h, w, _ = grid.shape
  nh, nw = new_hw
  if (h, w) == (nh, nw) and method != "bicubic_legacy_hf":  # legacy HF moves it anyway
    return grid
  if method == "zoom":
    return scipy.ndimage.zoom(grid, (nh / h, nw / w, 1), order=1).astype(np.float32)
  if method in METHODS[1:]:
    wh = _matrix(h, nh, method)
    ww = _matrix(w, nw, method)
    out = np.einsum("ih,hwc->iwc", wh, grid.astype(np.float64))
    out = np.einsum("jw,iwc->ijc", ww, out)
    return out.astype(np.float32)
  raise ValueError(f"unknown resize method {method!r}; use one of {METHODS}")


def _matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  if method == "bicubic_aa":
    return torch_antialias_matrix(in_size, out_size)
  if method == "bicubic_legacy_hf":   # torch maps coordinates with 1 / scale_factor
    return torch_interp_matrix(in_size, out_size, "bicubic",
                               scale=in_size / (out_size + 0.1))
  return torch_interp_matrix(in_size, out_size, method)


def torch_interp_matrix(in_size: int, out_size: int, method: str,
                        scale: float | None = None) -> np.ndarray:
  """[out, in] weights reproducing torch's 1-D interpolation (align_corners=False).

  `scale`: the source step per output pixel (default in_size / out_size; torch uses
  1 / scale_factor when one is given).
  """
  weights = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size if scale is None else scale
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


def torch_antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch's antialiased bicubic (`_upsample_bicubic2d_aa`).

  The cubic filter (A = -0.5, as PIL) has support 2, widened by the scale when
  downsampling; taps outside the input are dropped and the weights renormalised.
  """
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv = 1.0 / scale if scale >= 1.0 else 1.0
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.array([_pil_cubic((j - center + 0.5) * inv) for j in range(lo, hi)])
    total = taps.sum()
    weights[i, lo:hi] = taps / total if total != 0 else taps
  return weights


def _pil_cubic(x: float, a: float = -0.5) -> float:
  x = abs(x)
  if x < 1.0:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2.0:
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return 0.0
