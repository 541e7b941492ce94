"""A tiny learnable task for engine tests: the colour of a square on a noisy image.

The label does not depend on position, so even a frozen random backbone (which is
nearly permutation-invariant over patches) carries the signal.
"""

from __future__ import annotations

import numpy as np

from heat_jax.data import register_source
from heat_jax.data.base import ArraySplit, Task
from heat_jax.data.preprocess import normalizer


_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.uint8)


def colour_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Noisy images with a square of one of 4 colours at a random place."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, len(_COLOURS), n)
  images = rng.integers(0, 80, (n, size, size, 3)).astype(np.uint8)
  side = size // 2
  for i, c in enumerate(labels):
    y, x = rng.integers(0, size - side + 1, 2)
    images[i, y:y + side, x:x + side] += _COLOURS[c] * 150
  return images, labels.astype(np.int32)


def toy_task(data_config, *, image_size: int, value_range: str) -> Task:
  norm = normalizer(value_range)
  seed = int(data_config.get("synthetic_seed", 0))
  splits = {}
  for i, (name, n) in enumerate((("train", data_config.num_train),
                                 ("val", data_config.num_val),
                                 ("test", data_config.num_test))):
    images, labels = colour_images(int(n), image_size, seed * 10 + i)
    splits[name] = ArraySplit(name, images, labels, norm)
  return Task("toy_colour", 4, splits["train"], splits["test"],
              splits["val"] if data_config.num_val else None)


register_source("toy", toy_task)
