"""Golden ViT cases: rebuild a case's weights and images from seeds, run heat_jax on it.

A case is a JSON-able dict written by `tools/make_vit_fixtures.py`:

  name           case name
  arrays         keyword arguments of `fake_checkpoints.vit_arrays` (seed included)
  model          registered model name; `overrides` its create_model options
  image_hw       [H, W] the model runs at (the file grid may differ: posemb resize)
  interpolation  posemb resize method passed to `load_pretrained`
  images         {"seed": int, "count": int}: standard-normal NHWC float32 images
  fingerprints   float64 sums of the weights and images, to detect a changed RNG stream

The reference logits (from timm) live next to the JSON in `<name>.npz`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from heat_jax.testing.fake_checkpoints import vit_arrays


def case_arrays(case: dict[str, Any]) -> dict[str, np.ndarray]:
  """The synthetic checkpoint arrays of a case (exact on-disk names)."""
  return vit_arrays(**case["arrays"])


def case_images(case: dict[str, Any]) -> np.ndarray:
  """The case's input images [count, H, W, 3] float32 (seeded PCG64)."""
  h, w = case["image_hw"]
  rng = np.random.default_rng(case["images"]["seed"])
  return rng.standard_normal((case["images"]["count"], h, w, 3)).astype(np.float32)


def fingerprint(arrays: dict[str, np.ndarray] | np.ndarray) -> float:
  """A float64 checksum (sum of sums in sorted key order)."""
  if isinstance(arrays, np.ndarray):
    return float(np.sum(arrays, dtype=np.float64))
  return float(sum(np.sum(arrays[k], dtype=np.float64) for k in sorted(arrays)))


def file_head(case: dict[str, Any], arrays: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
  """head/kernel and head/bias as stored in the case's file."""
  prefix = case["arrays"].get("prefix", "")
  return arrays[f"{prefix}head/kernel"], arrays[f"{prefix}head/bias"]


def heat_jax_logits(case: dict[str, Any], npz_path: str | os.PathLike,
                    arrays: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
  """Loads `npz_path` with `load_pretrained`, sets the file's head, returns logits."""
  import jax  # imported lazily: the fixture tool may run without jax

  from heat_jax.checkpoints import load_pretrained
  from heat_jax.models import create_model

  num_classes = case["arrays"]["num_classes"]
  model = create_model(case["model"], num_classes, **case.get("overrides", {}))
  params = load_pretrained(npz_path, model, image_size=tuple(case["image_hw"]),
                           interpolation=case["interpolation"])
  kernel, bias = file_head(case, arrays)
  params["head"] = {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return np.asarray(apply(params, images))
