"""ADE20K / SceneParse150 (`config.data.source = 'ade20k'`): 150 classes, mmseg pipelines.

Two ways to the same data:
  * a folder in the ADEChallengeData2016 layout (`config.data.folder_root`):
    images/{training,validation}/*.jpg and annotations/{training,validation}/*.png
    (same stem); splits `training` / `validation`;
  * TFDS `scene_parse150` (`config.data.tfds_name`, `config.data.data_dir`), prepared as
    array_record (random access); splits `train` / `test` (= ADE's validation).
Annotations hold 0 = "other" and 1..150; as mmseg's `reduce_zero_label` the label is
annotation - 1 and 0 becomes the ignore index 255.

Training batches go through `seg_pipeline.train_transform` (random resize 0.5-2 of
2048x512, random crop of config.model.image_size with cat_max_ratio 0.75, flip,
photometric distortion), seeded by (seed, epoch, example). Evaluation resizes each image
keep-ratio to 2048x512 (short side 512) and its labels alike (nearest); images of one
batch share a canvas: the resized size rounded up to multiples of 128 (padding: image
0, labels 255), and the split is ordered by canvas so that a batch never mixes two.
Deviation: mmseg scores at the original resolution (logits resized back); here the
labels are resized to the inference resolution, so the counts differ slightly.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np
from PIL import Image

from heat_jax.data import register_source
from heat_jax.data.base import Batch, Task, batch_indices, pad_batch, select_rows
from heat_jax.data.preprocess import normalizer, to_rgb_uint8
from heat_jax.data import seg_pipeline
from heat_jax.errors import ConfigError, DataError

NUM_CLASSES = 150
IGNORE_INDEX = 255
CANVAS_MULTIPLE = 128
TEST_SCALE = (2048, 512)
DOWNLOAD = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
Loader = Callable[[int], tuple[np.ndarray, np.ndarray]]


def reduce_zero_label(annotation: np.ndarray) -> np.ndarray:
  """ADE annotation (0 = other, 1..150) -> labels 0..149, 255 = ignore (uint8)."""
  a = np.asarray(annotation)
  if a.ndim == 3:
    a = a[..., 0]
  a = a.astype(np.int32)
  return np.where(a == 0, IGNORE_INDEX, a - 1).astype(np.uint8)


def how_to_prepare(where: str) -> str:
  return (f"ADE20K is not available ({where}); download {DOWNLOAD}, unzip it and set "
          "config.data.folder_root=<dir>/ADEChallengeData2016, or prepare TFDS "
          "scene_parse150 as array_record and set config.data.data_dir")


# ----------------------------------------------------------------------------- sources


def folder_examples(root: str, split: str) -> tuple[list[str], list[str]]:
  """(image paths, annotation paths) of one split of an ADEChallengeData2016 folder."""
  img_dir = os.path.join(root, "images", split)
  ann_dir = os.path.join(root, "annotations", split)
  if not os.path.isdir(img_dir) or not os.path.isdir(ann_dir):
    raise DataError(how_to_prepare(f"no {img_dir} and {ann_dir}"))
  images = sorted(p for p in glob.glob(os.path.join(img_dir, "*"))
                  if p.lower().endswith((".jpg", ".jpeg", ".png")))
  if not images:
    raise DataError(how_to_prepare(f"{img_dir} holds no .jpg images"))
  anns = [os.path.join(ann_dir, os.path.splitext(os.path.basename(p))[0] + ".png")
          for p in images]
  missing = [a for a in anns if not os.path.isfile(a)]
  if missing:
    raise DataError(f"{len(missing)} images of {img_dir} have no annotation, e.g. "
                    f"{missing[0]}; every image needs annotations/{split}/<stem>.png")
  return images, anns


def folder_loader(images: list[str], anns: list[str]) -> Loader:
  def load(i: int) -> tuple[np.ndarray, np.ndarray]:
    try:
      with Image.open(images[i]) as im:
        image = to_rgb_uint8(np.asarray(im.convert("RGB")))
      with Image.open(anns[i]) as an:
        label = reduce_zero_label(np.asarray(an))
    except OSError as e:
      raise DataError(f"cannot read {images[i]} or its annotation: {e}") from None
    if label.shape != image.shape[:2]:
      raise DataError(f"{anns[i]} is {label.shape} but its image is {image.shape[:2]}")
    return image, label
  return load


def folder_sizes(images: list[str]) -> list[tuple[int, int]]:
  """(h, w) of each image from its header (no decoding)."""
  out = []
  for p in images:
    with Image.open(p) as im:
      out.append((im.size[1], im.size[0]))
  return out


def tfds_loader(source: Any) -> Loader:
  def load(i: int) -> tuple[np.ndarray, np.ndarray]:
    ex = source[i]
    return to_rgb_uint8(np.asarray(ex["image"])), reduce_zero_label(ex["annotation"])
  return load


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass
class SegTrainSplit:
  """Training examples through mmseg's random pipeline, one rng per (seed, epoch, index)."""

  name: str
  load: Loader
  num_examples: int
  crop: tuple[int, int]
  normalize: Callable[[np.ndarray], np.ndarray]
  seed: int = 0

  def example(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, epoch, index])
    image, label = self.load(index)
    return seg_pipeline.train_transform(rng, image, label, crop=self.crop)

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, drop_remainder: bool = False, pad: bool = False,
              rows: Optional[np.ndarray] = None) -> Iterator[Batch]:
    for idx in batch_indices(self.num_examples, batch_size, shuffle=shuffle, seed=seed,
                             epoch=epoch, drop_remainder=drop_remainder):
      idx, size = select_rows(idx, batch_size, rows, pad)
      pairs = [self.example(int(i), epoch) for i in idx]
      batch = {"image": self.normalize(np.stack([p[0] for p in pairs])),
               "label": np.stack([p[1] for p in pairs]).astype(np.int32),
               "mask": np.ones((len(pairs),), np.float32)}
      yield pad_batch(batch, size) if pad else batch


def canvas(hw: tuple[int, int], multiple: int = CANVAS_MULTIPLE) -> tuple[int, int]:
  h, w = seg_pipeline.rescale_size(hw, TEST_SCALE)
  return -(-h // multiple) * multiple, -(-w // multiple) * multiple


@dataclasses.dataclass
class SegEvalSplit:
  """Test-pipeline examples, batched per canvas (see the module docstring)."""

  name: str
  load: Loader
  sizes: list[tuple[int, int]]
  normalize: Callable[[np.ndarray], np.ndarray]

  @property
  def num_examples(self) -> int:
    return len(self.sizes)

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, drop_remainder: bool = False, pad: bool = False,
              rows: Optional[np.ndarray] = None) -> Iterator[Batch]:
    if shuffle or drop_remainder:
      raise ValueError(f"{self.name} is an evaluation split (no shuffle, every example)")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(self.sizes):
      groups.setdefault(canvas(hw), []).append(i)
    for shape in sorted(groups):
      members = np.asarray(groups[shape])
      for start in range(0, len(members), batch_size):
        idx, size = select_rows(members[start:start + batch_size], batch_size, rows, True)
        images = np.zeros((len(idx), *shape, 3), np.uint8)
        labels = np.full((len(idx), *shape), IGNORE_INDEX, np.int32)
        for n, i in enumerate(idx):
          image, label = seg_pipeline.test_transform(*self.load(int(i)), scale=TEST_SCALE)
          images[n, :image.shape[0], :image.shape[1]] = image
          labels[n, :label.shape[0], :label.shape[1]] = label
        batch = {"image": self.normalize(images), "label": labels,
                 "mask": np.ones((len(idx),), np.float32)}
        yield pad_batch(batch, size)


# ----------------------------------------------------------------------------- task


def build_ade20k(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """The `ade20k` source (folder when config.data.folder_root is set, else TFDS)."""
  if data_config.num_classes not in (0, NUM_CLASSES):
    raise ConfigError(f"config.data.num_classes={data_config.num_classes}: ADE20K has "
                      f"{NUM_CLASSES} classes; set 150 or 0")
  norm = normalizer(value_range)
  root = str(data_config.folder_root or "")
  if root:
    train_name = data_config.train_split or "training"
    test_name = data_config.test_split or "validation"
    if not os.path.isdir(root):
      raise DataError(how_to_prepare(f"config.data.folder_root={root} does not exist"))
    tr_images, tr_anns = folder_examples(root, train_name)
    te_images, te_anns = folder_examples(root, test_name)
    train_load, n_train = folder_loader(tr_images, tr_anns), len(tr_images)
    test_load, test_sizes = folder_loader(te_images, te_anns), folder_sizes(te_images)
    source = "folder"
  else:
    from heat_jax.data.tfds_source import open_split, resolve_data_dir
    data_dir, where = resolve_data_dir(data_config.data_dir)
    name = data_config.tfds_name or "scene_parse150"
    try:
      tr = open_split(name, data_config.train_split or "train", task="ade20k",
                      data_dir=data_dir, where=where)
      te = open_split(name, data_config.test_split or "test", task="ade20k",
                      data_dir=data_dir, where=where)
    except DataError:
      raise DataError(how_to_prepare(f"no folder_root and no prepared TFDS {name} in "
                                     f"{data_dir} (from {where})")) from None
    train_load, n_train = tfds_loader(tr), len(tr)
    test_load = tfds_loader(te)
    test_sizes = [test_load(i)[1].shape for i in range(len(te))]
    source = "tfds"
  train = SegTrainSplit("train", train_load, n_train, (image_size, image_size), norm,
                        seed=int(data_config.synthetic_seed))
  test = SegEvalSplit("test", test_load, [tuple(s) for s in test_sizes], norm)
  info = {"source": f"ade20k/{source}", "kind": "segmentation",
          "ignore_index": IGNORE_INDEX, "value_range": value_range,
          "resize_method": "bilinear"}
  return Task(name="ade20k", num_classes=NUM_CLASSES, train=train, test=test, info=info)


register_source("ade20k", build_ade20k)
