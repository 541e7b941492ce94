"""mmseg's ADE20K pipelines in numpy / PIL, seeded per example.

Training (mmseg `configs/_base_/datasets/ade20k.py`):
  RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
      r ~ U(0.5, 2); the image is rescaled by min(2048 r / long side, 512 r / short
      side), sizes int(x * f + 0.5); image bilinear, labels nearest;
  RandomCrop(512, cat_max_ratio=0.75)
      up to 10 random crops until no class (ignore excluded) covers >= 75 % of the
      crop's labelled pixels and at least two classes are present, else the last one;
  RandomFlip(0.5) horizontal;
  PhotoMetricDistortion: brightness +-32, contrast x[0.5, 1.5] (before or after the
      colour steps, 50 / 50), saturation x[0.5, 1.5], hue +-18 degrees-of-180, each
      applied with probability 0.5, values clipped to [0, 255];
  Pad to the crop (image 0, labels 255).
Test: Resize(scale=(2048, 512), keep_ratio=True), no augmentation.

Deviation: hue and saturation go through PIL's HSV (hue on 0-255) instead of OpenCV's
(hue on 0-180); the hue shift is converted (18 / 180 of the circle). Every random draw
comes from `default_rng([seed, epoch, example index])`, so an example's augmentation
does not depend on the batch it lands in or on the number of processes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
  """mmcv's keep-ratio rescale of (h, w) to fit `scale` = (long max, short max)."""
  h, w = hw
  f = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * f + 0.5), int(w * f + 0.5)


def resize_pair(image: np.ndarray, label: np.ndarray, hw: tuple[int, int]):
  if image.shape[:2] == tuple(hw):
    return image, label
  size = (hw[1], hw[0])
  im = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
  lab = np.asarray(Image.fromarray(label.astype(np.uint8)).resize(size,
                                                                 Image.Resampling.NEAREST))
  return im, lab


def random_crop(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                crop: tuple[int, int], cat_max_ratio: float = 0.75,
                ignore_index: int = IGNORE_INDEX):
  h, w = label.shape
  ch, cw = crop

  def box():
    y = int(rng.integers(0, max(h - ch, 0) + 1))
    x = int(rng.integers(0, max(w - cw, 0) + 1))
    return y, x

  y, x = box()
  if cat_max_ratio < 1.0:
    for _ in range(10):
      sub = label[y:y + ch, x:x + cw]
      _, counts = np.unique(sub[sub != ignore_index], return_counts=True)
      if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
        break
      y, x = box()
  return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def photometric_distortion(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  img = image.astype(np.float32)
  if rng.integers(2):
    img = np.clip(img + rng.uniform(-32, 32), 0, 255)
  mode = int(rng.integers(2))
  if mode == 1 and rng.integers(2):
    img = np.clip(img * rng.uniform(0.5, 1.5), 0, 255)
  sat, hue = bool(rng.integers(2)), bool(rng.integers(2))
  sat_f = rng.uniform(0.5, 1.5) if sat else 1.0
  hue_d = int(rng.integers(-18, 18)) if hue else 0
  if sat or hue:
    hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV")).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat_f, 0, 255)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_d * 256.0 / 180.0, 256.0)
    img = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"),
                     np.float32)
  if mode == 0 and rng.integers(2):
    img = np.clip(img * rng.uniform(0.5, 1.5), 0, 255)
  return img.astype(np.uint8)


def pad_to(image: np.ndarray, label: np.ndarray, hw: tuple[int, int],
           ignore_index: int = IGNORE_INDEX):
  ph, pw = max(hw[0] - image.shape[0], 0), max(hw[1] - image.shape[1], 0)
  if ph or pw:
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_index)
  return image, label


def train_transform(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, *,
                    crop: tuple[int, int] = (512, 512), scale: tuple[int, int] = (2048, 512),
                    ratio_range: tuple[float, float] = (0.5, 2.0),
                    cat_max_ratio: float = 0.75):
  """One training example: (uint8 [crop, 3], uint8 labels [crop])."""
  r = rng.uniform(*ratio_range)
  hw = rescale_size(image.shape[:2], (int(scale[0] * r), int(scale[1] * r)))
  image, label = resize_pair(image, label, hw)
  image, label = random_crop(rng, image, label, crop, cat_max_ratio)
  if rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  image = photometric_distortion(rng, np.ascontiguousarray(image))
  return pad_to(image, np.ascontiguousarray(label), crop)


def test_transform(image: np.ndarray, label: np.ndarray, *,
                   scale: tuple[int, int] = (2048, 512)):
  """Keep-ratio resize to `scale` (labels nearest-resized alike)."""
  return resize_pair(image, label, rescale_size(image.shape[:2], scale))
