"""A tiny learnable task for engine tests: which quadrant holds the bright square."""

from __future__ import annotations

import numpy as np

from heat_jax.data import register_source
from heat_jax.data.base import ArraySplit, Task
from heat_jax.data.preprocess import normalizer


def quadrant_images(n: int, size: int, seed: int, num_classes: int = 4
                    ) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
  half = size // 2
  for i, c in enumerate(labels):
    y, x = divmod(int(c) % 4, 2)
    images[i, y * half:(y + 1) * half, x * half:(x + 1) * half] += 120
  return images, labels.astype(np.int32)


def toy_task(data_config, *, image_size: int, value_range: str) -> Task:
  norm = normalizer(value_range)
  seed = int(data_config.get("synthetic_seed", 0))
  splits = {}
  for i, (name, n) in enumerate((("train", data_config.num_train),
                                 ("val", data_config.num_val),
                                 ("test", data_config.num_test))):
    images, labels = quadrant_images(int(n), image_size, seed * 10 + i)
    splits[name] = ArraySplit(name, images, labels, norm)
  return Task("toy_quadrant", 4, splits["train"], splits["test"],
              splits["val"] if data_config.num_val else None)


register_source("toy", toy_task)
