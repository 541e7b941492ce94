"""Small data files shipped inside the package.

`digits.npz` is a copy of the 8x8 handwritten digits that scikit-learn bundles
(`sklearn.datasets.load_digits`: the test set of the UCI "Optical Recognition of
Handwritten Digits" data, E. Alpaydin and C. Kaynak, 1998). scikit-learn distributes it
under the BSD-3-Clause license (Copyright the scikit-learn developers); UCI publishes the
data under CC BY 4.0. It is shipped so that the synthetic `digits` task needs no
scikit-learn at run time; `tools/make_digits_asset.py` regenerates it.

`demo_backbone.npz` (+ `.json`: its pretraining key, sha256 and held-out accuracy) is the
offline demo's pretrained ViT-demo, a merged.npz made by the study's own pretraining
(`tools/make_demo_backbone.py`), so that `heat-jax` with the demo config pretrains
nothing; `heat_jax.study.pretrained_backbone` uses it for the default settings only.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

DIGITS_FILE = "digits.npz"


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [1797, 8, 8] with values 0..16, labels int64 [1797]), read-only."""
  with resources.files(__name__).joinpath(DIGITS_FILE).open("rb") as f:
    with np.load(f, allow_pickle=False) as data:
      images, labels = data["images"], data["labels"].astype(np.int64)
  images.setflags(write=False)  # cached: callers must not modify the shared copy
  labels.setflags(write=False)
  return images, labels
