"""Writes heat_jax/assets/digits.npz from scikit-learn's bundled digits (needs sklearn).

The file holds `images` (uint8 [1797, 8, 8], values 0..16, exactly sklearn's integer
pixels) and `labels` (uint8 [1797]). See heat_jax/assets/__init__.py for the license.

Usage: python tools/make_digits_asset.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heat_jax.io_utils import atomic_open  # noqa: E402

OUT = REPO / "heat_jax" / "assets" / "digits.npz"


def main() -> None:
  data = load_digits()
  images = data.images
  # sklearn stores 0..16 counts as float64; uint8 keeps them exactly.
  assert np.array_equal(images, np.rint(images)) and images.min() >= 0 and images.max() <= 16
  with atomic_open(OUT, "wb") as f:
    np.savez_compressed(f, images=images.astype(np.uint8),
                        labels=data.target.astype(np.uint8))
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
