"""Image preprocessing: resize (PIL), grayscale to RGB, value-range normalisation.

Value ranges (`config.data.value_range`):
  * `minus1_1`: (x - 127.5) / 127.5, how Google's ViT checkpoints were trained;
  * `imagenet`: x / 255 then ImageNet mean/std (Swin, DeiT, DINOv2, PyTorch PETL
    baselines);
  * `clip`: x / 255 then OpenAI CLIP's mean/std (CLIP image towers);
  * `unit`: x / 255;
  * `auto`: the normalisation the model's pretrained weights expect, which the caller
    passes in (`heat_jax.models.model_info(name).value_range`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from heat_jax.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# name -> (mean, std) of x / 255; minus1_1 is mean = std = 0.5 (timm's "inception").
MEAN_STD = {"minus1_1": (np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32)),
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD),
            "unit": (np.zeros(3, np.float32), np.ones(3, np.float32))}
VALUE_RANGES = ("minus1_1", "imagenet", "clip", "unit")
RESIZE_METHODS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def resolve_value_range(value_range: str, auto: str = "minus1_1") -> str:
  """`config.data.value_range`, with `auto` replaced by the model's own (`auto`)."""
  if value_range == "auto":
    value_range = auto
  if value_range not in VALUE_RANGES:
    raise ConfigError(f"config.data.value_range={value_range!r} is not one of "
                      f"{('auto',) + VALUE_RANGES}")
  return value_range


def normalizer(value_range: str) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [..., 3] -> float32 in the given value range."""
  if value_range == "minus1_1":
    return lambda x: (np.asarray(x, np.float32) - 127.5) / 127.5
  if value_range == "unit":
    return lambda x: np.asarray(x, np.float32) / 255.0
  if value_range in MEAN_STD:
    mean, std = MEAN_STD[value_range]
    return lambda x: (np.asarray(x, np.float32) / 255.0 - mean) / std
  raise ConfigError(f"unknown value range {value_range!r}; use one of {VALUE_RANGES}")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (any int/float dtype) -> uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
      image = image * 255.0
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"cannot convert an image of shape {image.shape} to RGB")
  return image


def resize_uint8(image: np.ndarray, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
  """Resizes an RGB uint8 image to (height, width) with PIL."""
  image = to_rgb_uint8(image)
  if image.shape[:2] == tuple(size):
    return image
  pil = Image.fromarray(image).resize((size[1], size[0]), RESIZE_METHODS[check_resize_method(method)])
  return np.asarray(pil, np.uint8)


def check_resize_method(method: str) -> str:
  """Validates `config.data.resize_method`."""
  if method not in RESIZE_METHODS:
    raise ConfigError(f"config.data.resize_method={method!r} is not one of "
                      f"{sorted(RESIZE_METHODS)}")
  return method


def split_names(data_config, hint: str) -> dict[str, str]:
  """{'train', 'val', 'test'} split names from `config.data`; train and test required.

  `hint` completes the error message (what a split name looks like for the source).
  """
  splits = {"train": data_config.train_split, "val": data_config.val_split,
            "test": data_config.test_split}
  for role in ("train", "test"):
    if not splits[role]:
      raise ConfigError(f"config.data.{role}_split is empty; set it to {hint}")
  return splits


def value_range_of(mean, std, *, tol: float = 1e-4) -> str | None:
  """The named value range with this mean/std (timm's `pretrained_cfg`), or None."""
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  for name, (m, s) in MEAN_STD.items():
    if mean.shape == m.shape and np.allclose(mean, m, atol=tol) and np.allclose(std, s, atol=tol):
      return name
  return None
