"""Dense inference: whole image or sliding windows (mmseg 'slide'), multi-scale + flip.

`forward(images [N, h, w, 3]) -> logits [N, h, w, C]` is the model in eval mode at the
input resolution. Sliding windows follow mmseg's `slide_inference`: windows of `crop`
every `stride` pixels, the last row / column of windows moved back so that it ends at
the image border, logits summed where windows overlap and divided by the number of
windows covering each pixel. An image smaller than the crop is padded (bottom / right,
zeros in the normalised space) to the crop and the padding is cut from the logits:
the ViT's position embedding fixes its input size (mmseg would run the smaller crop).

`probabilities` averages the softmax over scales and flips as mmseg's aug_test does:
each scale resizes the image by the factor (round half up), each flip is horizontal and
undone on the logits, and every view's logits are resized (bilinear, half-pixel, no
antialias: torch's F.interpolate(align_corners=False)) to `out_hw` before the softmax.
Everything is traceable with static shapes, so it runs inside one `jax.jit`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Forward = Callable[[Array], Array]
MODES = ("whole", "slide")


def windows(hw: tuple[int, int], crop: tuple[int, int],
            stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
  """(y1, y2, x1, x2) of mmseg's sliding windows over an image of `hw`."""
  (h, w), (hc, wc), (hs, ws) = hw, crop, stride
  rows = max(h - hc + hs - 1, 0) // hs + 1
  cols = max(w - wc + ws - 1, 0) // ws + 1
  out = []
  for i in range(rows):
    for j in range(cols):
      y1, x1 = i * hs, j * ws
      y2, x2 = min(y1 + hc, h), min(x1 + wc, w)
      out.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
  return out


def slide_logits(forward: Forward, images: Array, *, crop: tuple[int, int],
                 stride: tuple[int, int]) -> Array:
  """Logits [B, H, W, C] of overlapping crops, averaged where they overlap."""
  b, h, w, _ = images.shape
  hc, wc = crop
  ph, pw = max(hc - h, 0), max(wc - w, 0)
  if ph or pw:
    padded = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return slide_logits(forward, padded, crop=crop, stride=stride)[:, :h, :w]
  boxes = windows((h, w), crop, stride)
  crops = jnp.concatenate([images[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], axis=0)
  logits = forward(crops).astype(jnp.float32)          # [len(boxes) * B, hc, wc, C]
  c = logits.shape[-1]
  total = jnp.zeros((b, h, w, c), jnp.float32)
  count = jnp.zeros((1, h, w, 1), jnp.float32)
  for n, (y1, y2, x1, x2) in enumerate(boxes):
    total = total.at[:, y1:y2, x1:x2].add(logits[n * b:(n + 1) * b])
    count = count.at[:, y1:y2, x1:x2].add(1.0)
  return total / count


def logits(forward: Forward, images: Array, *, mode: str = "slide",
           crop: tuple[int, int] = (512, 512),
           stride: tuple[int, int] = (341, 341)) -> Array:
  """One view's logits [B, H, W, C] at the image's resolution."""
  if mode == "whole":
    return forward(images).astype(jnp.float32)
  if mode == "slide":
    return slide_logits(forward, images, crop=crop, stride=stride)
  raise ValueError(f"inference mode {mode!r} is not one of {MODES}")


def resize_logits(x: Array, hw: tuple[int, int]) -> Array:
  """Bilinear resize of [B, h, w, C] to hw (half-pixel centres, no antialias)."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "bilinear", antialias=False)


def scaled_hw(hw: tuple[int, int], scale: float) -> tuple[int, int]:
  """mmseg's rescale of a size by a factor: int(side * scale + 0.5)."""
  return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)


def probabilities(forward: Forward, images: Array, *, out_hw: tuple[int, int],
                  mode: str = "slide", crop: tuple[int, int] = (512, 512),
                  stride: tuple[int, int] = (341, 341), scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> Array:
  """Softmax [B, *out_hw, C] averaged over `scales` x (no flip, horizontal flip)."""
  hw = tuple(images.shape[1:3])
  total, views = None, 0
  for s in scales:
    size = scaled_hw(hw, s)
    x = images if size == hw else jax.image.resize(
        images, (images.shape[0], *size, images.shape[3]), "bilinear", antialias=False)
    for flipped in ((False, True) if flip else (False,)):
      view = x[:, :, ::-1] if flipped else x
      y = logits(forward, view, mode=mode, crop=crop, stride=stride)
      if flipped:
        y = y[:, :, ::-1]
      p = jax.nn.softmax(resize_logits(y, out_hw), axis=-1)
      total = p if total is None else total + p
      views += 1
  return total / views
