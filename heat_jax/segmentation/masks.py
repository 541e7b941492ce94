"""Label PNGs of a finished segmentation run (`heat_jax.predict` on such a run).

Each image is read at its own size (RGB), scaled to the run's value range, run through
the run's inference (`config.seg`: sliding windows of the model's size, scales, flip)
and its argmax written as an 8-bit palette PNG (pixel value = class index; the colours
are the data's palette when it has one, else the PASCAL VOC bit-interleaved palette).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from heat_jax.io_utils import atomic_open


def default_palette(num_classes: int) -> np.ndarray:
  """uint8 [K, 3]: the PASCAL VOC palette (bits of the index interleaved over R, G, B)."""
  out = np.zeros((num_classes, 3), np.uint8)
  for i in range(num_classes):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    out[i] = (r, g, b)
  return out


def save_mask(path: str, mask: np.ndarray, palette: np.ndarray) -> None:
  """An 8-bit 'P' PNG whose pixel values are the class indices, written atomically."""
  image = Image.fromarray(mask.astype(np.uint8), mode="P")
  flat = np.zeros((256, 3), np.uint8)
  flat[:len(palette)] = palette[:256]
  image.putpalette(flat.reshape(-1).tolist())
  with atomic_open(path, "wb") as f:
    image.save(f, format="PNG")


def write_masks(model: Any, variables: dict, paths: Sequence[str], run_config: dict,
                out_dir: str, palette: Optional[Sequence[Sequence[int]]] = None) -> list[str]:
  """One label PNG per image in `out_dir` (named after the image); returns their paths."""
  import jax
  import jax.numpy as jnp
  import ml_collections

  from heat_jax.data.preprocess import normalizer, to_rgb_uint8
  from heat_jax.tasks import get_task_kind
  config = ml_collections.ConfigDict(run_config)
  kind = get_task_kind("segmentation", config)
  predict = kind.eval_predict(lambda v, x: model.apply(v, x, train=False))
  labels_of = jax.jit(lambda v, x: jnp.argmax(predict(v, x), -1))
  num_classes = int(model.num_classes)
  colours = (np.asarray(palette, np.uint8) if palette is not None
             else default_palette(num_classes))
  normalize = normalizer(config.data.value_range if config.data.value_range != "auto"
                         else "minus1_1")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for path in paths:
    with Image.open(path) as im:
      image = to_rgb_uint8(np.asarray(im.convert("RGB")))
    mask = np.asarray(labels_of(variables, normalize(image)[None]))[0]
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
    save_mask(out, mask, colours)
    written.append(out)
  return written
