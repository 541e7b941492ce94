"""Offline synthetic segmentation (`config.data.source = 'seg_synthetic'`).

Each image is a textured, noisy background (class 0) with 1-3 objects: a square, a
circle or a triangle (random centre, scale 0.18-0.35 of the width, rotation), each of
a random foreground class 1..K-1. A class is told by its colour (hue (c - 1) / (K - 1),
jittered) and its stripe frequency; the shape itself carries no class. Masks are
exact: a pixel takes the class of the last object covering its centre, and pixels that
an object only partly covers (2x2 supersampling) are labelled `IGNORE_INDEX` (255), so
the ignore path is exercised as with ADE20K's unlabelled pixels. Generation is seeded
per split (`default_rng([seed, split stream])`): same seed, same bits.

Config: `data.num_classes` (0 = 4), `data.num_train` / `num_val` / `num_test`,
`data.synthetic_seed`; images at `config.model.image_size`. Labels are int32
[n, S, S]; `train_split='train800val200'` trains on train + val as `synthetic` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heat_jax.data import register_source
from heat_jax.data.base import ArraySplit, Task
from heat_jax.data.preprocess import normalizer
from heat_jax.data.synthetic import CIRCLE, SQUARE, TRIANGLE, _inside, hsv_to_rgb
from heat_jax.errors import ConfigError

IGNORE_INDEX = 255
DEFAULT_CLASSES = 4
STREAMS = {"train800": 0, "val200": 1, "test": 2}
_SHAPES = (SQUARE, CIRCLE, TRIANGLE)


def palette(num_classes: int) -> np.ndarray:
  """uint8 [K, 3]: black background, then the classes' hues at full brightness."""
  out = np.zeros((num_classes, 3), np.uint8)
  if num_classes > 1:
    hue = np.arange(num_classes - 1) / (num_classes - 1)
    out[1:] = np.rint(hsv_to_rgb(hue, np.full_like(hue, 0.8), np.ones_like(hue)) * 255)
  return out


def generate(rng: np.random.Generator, n: int, size: int,
             num_classes: int = DEFAULT_CLASSES) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [n, S, S, 3], int32 labels [n, S, S]) of one split."""
  k = num_classes
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
  sub = np.array([0.25, 0.75], np.float32)
  images = np.empty((n, size, size, 3), np.uint8)
  labels = np.zeros((n, size, size), np.int32)
  for i in range(n):
    bg = hsv_to_rgb(np.array(rng.uniform()), np.array(rng.uniform(0, 0.5)),
                    np.array(rng.uniform(0.05, 0.25)))
    img = np.broadcast_to(bg.astype(np.float32), (size, size, 3)).copy()
    img += rng.standard_normal((size, size, 1)).astype(np.float32) * 0.05
    lab = np.zeros((size, size), np.int32)
    for _ in range(int(rng.integers(1, 4))):
      c = int(rng.integers(1, k))
      sid = int(rng.choice(_SHAPES))
      cx, cy = rng.uniform(0.2, 0.8, 2) * size
      scale = rng.uniform(0.18, 0.35) * size
      a = rng.uniform(0, 2 * np.pi)
      ca, sa = np.cos(a), np.sin(a)
      cover = np.zeros((size, size), np.float32)
      for oy in sub:
        for ox in sub:
          dx, dy = (xs + ox - cx) / scale, (ys + oy - cy) / scale
          cover += _inside(sid, ca * dx + sa * dy, -sa * dx + ca * dy).astype(np.float32)
      cover /= 4.0
      dx, dy = (xs + 0.5 - cx) / scale, (ys + 0.5 - cy) / scale
      centre = _inside(sid, ca * dx + sa * dy, -sa * dx + ca * dy)
      hue = (c - 1) / max(k - 1, 1) + rng.uniform(-0.03, 0.03)
      colour = hsv_to_rgb(np.array(hue), np.array(rng.uniform(0.6, 0.9)),
                          np.array(rng.uniform(0.8, 1.0))).astype(np.float32)
      freq = 2.0 * np.pi * (1 + c) / 16.0
      stripes = 0.75 + 0.25 * np.cos(freq * (xs * ca + ys * sa) + rng.uniform(0, 6.3))
      fg = colour * stripes[..., None]
      img = img * (1 - cover[..., None]) + fg * cover[..., None]
      lab = np.where(centre, c, lab)
      lab = np.where((cover > 0) & (cover < 1), IGNORE_INDEX, lab)
    images[i] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    labels[i] = lab
  return images, labels


def generate_split(split: str, n: int, *, seed: int, size: int,
                   num_classes: int = DEFAULT_CLASSES) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng([seed, 0x5E6, STREAMS[split]])
  return generate(rng, n, size, num_classes)


def build_seg_synthetic(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """The `seg_synthetic` source; see the module docstring."""
  k = int(data_config.num_classes) or DEFAULT_CLASSES
  if k < 2 or k > 32:
    raise ConfigError(f"config.data.num_classes={k} must be in [2, 32] for seg_synthetic "
                      "(0 = 4)")
  sizes = {"train800": int(data_config.num_train) - int(data_config.num_val),
           "val200": int(data_config.num_val), "test": int(data_config.num_test)}
  if sizes["train800"] < 1 or sizes["test"] < 1 or sizes["val200"] < 0:
    raise ConfigError("config.data: seg_synthetic needs num_train > num_val >= 0 and "
                      "num_test >= 1")
  seed = int(data_config.synthetic_seed)
  norm = normalizer(value_range)
  splits = {}
  for split, n in sizes.items():
    if n:
      images, labels = generate_split(split, n, seed=seed, size=image_size, num_classes=k)
      splits[split] = ArraySplit(split, images, labels, norm)
  train = splits["train800"]
  train_split = data_config.train_split or "train800val200"
  if train_split == "train800val200" and "val200" in splits:
    train = ArraySplit("train800val200",
                       np.concatenate([train.images, splits["val200"].images]),
                       np.concatenate([train.labels, splits["val200"].labels]), norm)
  names = ["background"] + [f"class_{c}" for c in range(1, k)]
  info = {"source": "seg_synthetic", "kind": "segmentation", "seed": seed,
          "ignore_index": IGNORE_INDEX, "class_names": names,
          "palette": palette(k).tolist(), "train_split": train_split,
          "val_in_train": train_split == "train800val200" and "val200" in splits,
          "split_sizes": {s: sp.num_examples for s, sp in splits.items()},
          "value_range": value_range, "resize_method": "bilinear"}
  return Task(name="seg_synthetic/shapes", num_classes=k, train=train, test=splits["test"],
              val=splits.get("val200"), info=info)


register_source("seg_synthetic", build_seg_synthetic)
