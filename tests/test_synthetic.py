"""Tests of the offline synthetic tasks (heat_jax.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from configs.common import base_config
from heat_jax.data import build_task
from heat_jax.data import synthetic as syn
from heat_jax.errors import ConfigError

ALL_TASKS = tuple(syn.GENERATORS)
SMALL = dict(num_train=60, num_val=20, num_test=40)


def _small_task(name, seed=0, image_size=32, value_range="unit", **kw):
  return syn.make_task(name, seed=seed, image_size=image_size, value_range=value_range,
                       **{**SMALL, **kw})


def _foreground(images):
  """Per-pixel foreground weight in [0, 1] of dark-background sprite images."""
  g = images.astype(np.float32).max(-1)
  bg = np.median(g, axis=(1, 2), keepdims=True)
  fg = g.max(axis=(1, 2), keepdims=True)
  return np.clip((g - bg) / np.maximum(fg - bg, 1.0), 0.0, 1.0)


def _centroids(images):
  """(x, y) centre of mass of the foreground, in units of the image width."""
  w = _foreground(images)
  w = np.where(w > 0.15, w, 0.0)
  pos = (np.arange(images.shape[1]) + 0.5) / images.shape[1]
  total = w.sum((1, 2))
  return (w.sum(1) * pos).sum(1) / total, (w.sum(2) * pos).sum(1) / total


@pytest.mark.parametrize("name", ALL_TASKS)
def test_same_seed_is_bit_identical(name):
  a, b = _small_task(name, seed=3), _small_task(name, seed=3)
  for split in ("train", "val", "test"):
    sa, sb = getattr(a, split), getattr(b, split)
    assert sa.images.dtype == np.uint8 and sa.images.shape == sb.images.shape
    np.testing.assert_array_equal(sa.images, sb.images)
    np.testing.assert_array_equal(sa.labels, sb.labels)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_different_seeds_differ(name):
  a, b = _small_task(name, seed=0), _small_task(name, seed=1)
  assert not np.array_equal(a.train.images, b.train.images)
  assert not np.array_equal(a.test.images, b.test.images)


@pytest.mark.parametrize("name", syn.DOWNSTREAM_TASKS)
def test_splits_are_disjoint(name):
  task = syn.make_task(name, seed=0, image_size=syn.native_size(name), value_range="unit",
                       num_train=400, num_val=200, num_test=200, train_split="train800")
  # Equal sizes, so splits drawn from one shared stream would coincide.
  keys = {s: {im.tobytes() for im in getattr(task, s).images} for s in ("train", "val", "test")}
  assert all(len(k) == 200 for k in keys.values())
  assert not keys["train"] & keys["val"]
  assert not keys["train"] & keys["test"]
  assert not keys["val"] & keys["test"]


@pytest.mark.parametrize("name", ALL_TASKS)
def test_labels_in_range_and_balanced(name):
  k = syn.num_classes(name)
  task = syn.make_task(name, seed=2, image_size=syn.native_size(name), value_range="unit",
                       num_train=40 * k, num_val=10 * k, num_test=20 * k)
  for split in (task.train, task.val, task.test):
    assert split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < k
    counts = np.bincount(split.labels, minlength=k)
    expected = split.num_examples / k
    if name == "digits":     # stratified slices of real data: roughly balanced
      assert counts.min() >= 0.75 * expected and counts.max() <= 1.25 * expected
    elif name == "pretraining":   # balanced per component, so per range
      assert counts.min() > 0
    else:
      assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("value_range,lo,hi", [("unit", 0.0, 1.0), ("minus1_1", -1.0, 1.0),
                                               ("imagenet", -2.2, 2.7)])
def test_batches_shapes_dtypes_and_value_range(value_range, lo, hi):
  for name, size in (("sprite_x", 32), ("count", 24), ("digits", 40)):
    task = _small_task(name, image_size=size, value_range=value_range)
    assert task.num_classes == syn.num_classes(name)
    assert task.train.images.shape == (SMALL["num_train"], size, size, 3)
    batch = next(task.train.batches(16, shuffle=True, seed=0))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, size, size, 3)
    assert batch["label"].dtype == np.int32 and batch["mask"].shape == (16,)
    assert batch["image"].min() >= lo - 1e-5 and batch["image"].max() <= hi + 1e-5
    assert batch["image"].max() - batch["image"].min() > 0.5 * (hi - lo)


def test_train_split_protocols():
  full = _small_task("texture")   # train800val200: train800 + val200, val200 reported too
  assert full.train.num_examples == 60 and full.val.num_examples == 20
  assert full.info["val_in_train"]
  np.testing.assert_array_equal(full.train.images[40:], full.val.images)
  only = _small_task("texture", train_split="train800")
  assert only.train.num_examples == 40 and not only.info["val_in_train"]
  np.testing.assert_array_equal(only.train.images, full.train.images[:40])
  assert _small_task("texture", num_val=0).val is None
  digits = syn.make_task("digits", seed=0, image_size=8, value_range="unit")
  assert digits.test.num_examples == 1797 - 1000


def _config(**data):
  config = base_config()
  config.data.source = "synthetic"
  config.data.update({"task": "sprite_x", "num_train": 50, "num_val": 10, "num_test": 20,
                      **data})
  return config


def test_build_task_from_config():
  config = _config(train_split="train800", synthetic_seed=4)
  task = build_task(config.data, image_size=48)
  # Loading data never changes the config (the run's fingerprint is taken from it).
  assert task.num_classes == 8 and config.data.num_classes == 0
  assert task.train.num_examples == 40 and task.val.num_examples == 10
  assert task.test.images.shape == (20, 48, 48, 3)
  assert task.info["value_range"] == "minus1_1"
  again = syn.make_task("sprite_x", seed=4, image_size=48, value_range="minus1_1",
                        num_train=50, num_val=10, num_test=20, train_split="train800")
  np.testing.assert_array_equal(task.test.images, again.test.images)


@pytest.mark.parametrize("data,match", [
    ({"task": "clevr"}, "not a synthetic task"),
    ({"task": "count", "num_classes": 10}, "has 8 classes"),
    ({"train_split": "train[:800]"}, "train_split"),
    ({"val_split": "validation"}, "val_split"),
    ({"num_val": 50}, "num_val < num_train"),
    ({"task": "digits", "num_train": 1797}, "digits"),
    ({"synthetic_seed": -1}, "synthetic_seed"),
])
def test_config_errors(data, match):
  with pytest.raises(ConfigError, match=match) as err:
    build_task(_config(**data).data, image_size=32)
  assert "\n" not in err.value.one_line()


def test_sprite_x_and_y_labels_follow_the_centroid():
  lo, hi = syn.SPRITE_RANGE
  for gen, axis in ((syn.sprite_x, 0), (syn.sprite_y, 1)):
    images, labels = gen(np.random.default_rng(7), 400, 32)
    centre = _centroids(images)[axis]
    predicted = np.floor((centre - lo) / (hi - lo) * 8).astype(int)
    assert np.mean(predicted == labels) > 0.95
    assert np.all(np.abs(predicted - labels) <= 1)


def test_colour_label_is_the_hue_of_the_sprite():
  images, labels = syn.sprite_colour(np.random.default_rng(12), 300, 32)
  from skimage.color import rgb2hsv
  mask = _foreground(images) > 0.9
  angle = [2 * np.pi * rgb2hsv(im)[m][:, 0] for im, m in zip(images, mask)]
  hue = np.array([np.arctan2(np.sin(a).mean(), np.cos(a).mean()) for a in angle]) / (2 * np.pi)
  predicted = np.floor(np.mod(hue + 0.5 / syn.COLOUR_BINS, 1.0) * syn.COLOUR_BINS)
  assert np.mean(predicted == labels) > 0.95


def test_sprite_orientation_label_follows_the_heart():
  """The notch of a heart is the direction of least extent from its centroid."""
  images, labels = syn.sprite_orientation(np.random.default_rng(8), 300, 32)
  mask = _foreground(images) > 0.5
  pos = (np.arange(32) + 0.5) / 32
  yy, xx = np.meshgrid(pos, pos, indexing="ij")
  sectors = 24
  errors = []
  for m, label in zip(mask, labels):
    px, py = xx[m], yy[m]
    dx, dy = px - px.mean(), py - py.mean()
    sector = np.floor(np.arctan2(dy, dx) / (2 * np.pi) * sectors).astype(int) % sectors
    extent = np.zeros(sectors)
    np.maximum.at(extent, sector, np.hypot(dx, dy))
    extent = (np.roll(extent, 1) + extent + np.roll(extent, -1)) / 3
    tip = (np.argmin(extent) + 0.5) * 2 * np.pi / sectors + np.pi
    # rotation theta (clockwise on screen) moves the tip from (0, 1) to (-sin, cos).
    theta = np.mod(np.arctan2(-np.cos(tip), np.sin(tip)), 2 * np.pi)
    predicted = int(theta // (np.pi / 4)) % 8
    errors.append(min((predicted - label) % 8, (label - predicted) % 8))
  errors = np.array(errors)
  assert np.mean(errors == 0) > 0.85
  assert np.mean(errors <= 1) > 0.98


def test_count_label_matches_connected_components():
  images, labels = syn.count(np.random.default_rng(9), 300, 48)
  found = np.array([scipy.ndimage.label(m)[1] for m in _foreground(images) > 0.5])
  assert np.mean(found == labels + syn.COUNT_RANGE[0]) > 0.95


def test_texture_frequency_level_is_the_spectral_peak():
  images, labels = syn.texture(np.random.default_rng(10), 480, 32)
  g = images.astype(np.float32).mean(-1)
  power = np.abs(np.fft.fft2(g - g.mean((1, 2), keepdims=True))) ** 2
  f = np.fft.fftfreq(32) * 32
  radius = np.hypot(f[:, None], f[None, :]).reshape(-1)
  peak = radius[power.reshape(len(power), -1).argmax(1)]
  pattern, level = np.divmod(labels, len(syn.TEXTURE_FREQUENCIES))
  checks = pattern == syn.TEXTURE_PATTERNS.index("checks")
  peak = np.where(checks, peak / np.sqrt(2), peak)   # checks peak on the diagonals
  predicted = np.abs(peak[:, None] - np.array(syn.TEXTURE_FREQUENCIES)[None]).argmin(1)
  assert np.mean(predicted == level) > 0.95


def test_pretraining_mixture_frames_and_label_ranges():
  images, labels, comp = syn.pretraining_mixture(np.random.default_rng(11), 200, 32,
                                                 return_component=True)
  assert images.shape == (200, 32, 32, 3) and labels.max() < syn.PRETRAIN_NUM_CLASSES
  for c, (name, _, k) in enumerate(syn.PRETRAIN_COMPONENTS):
    sel = comp == c
    assert sel.sum() == 40
    offset = syn.PRETRAIN_OFFSETS[name]
    assert np.all((labels[sel] >= offset) & (labels[sel] < offset + k))
    np.testing.assert_array_equal(images[sel][:, 0, 0], np.tile(syn.FRAME_COLOURS[c], (40, 1)))
  # The frame colour alone tells the component apart (the label range is in the image).
  corner = images[:, 0, 0].astype(int)
  nearest = np.abs(corner[:, None] - syn.FRAME_COLOURS[None].astype(int)).sum(-1).argmin(1)
  np.testing.assert_array_equal(nearest, comp)


def _features(images):
  """Simple features: pooled pixels, log spectrum, and per-threshold foreground area,
  edge counts and 2x2 binary-pattern histograms."""
  g = images.astype(np.float32).max(-1) / 255.0
  n, s = g.shape[:2]
  pooled = g.reshape(n, s // 2, 2, s // 2, 2).mean((2, 4)).reshape(n, -1)
  spectrum = np.log1p(np.abs(np.fft.rfft2(g - g.mean((1, 2), keepdims=True)))).reshape(n, -1)
  masks = g[:, None] > np.linspace(0.05, 0.95, 19)[None, :, None, None]
  area = masks.mean((2, 3))
  edges = ((masks[..., 1:, :] != masks[..., :-1, :]).mean((2, 3))
           + (masks[..., 1:] != masks[..., :-1]).mean((2, 3)))
  m = masks[:, 4:15:2].astype(np.int64)
  code = m[..., :-1, :-1] + 2 * m[..., :-1, 1:] + 4 * m[..., 1:, :-1] + 8 * m[..., 1:, 1:]
  rows = np.arange(code.shape[0] * code.shape[1])[:, None] * 16
  quads = np.bincount((rows + code.reshape(len(rows), -1)).reshape(-1), minlength=len(rows) * 16)
  quads = quads.reshape(n, -1) / code[0, 0].size
  return np.concatenate([pooled, spectrum, area, edges, quads], 1)


def _ridge_pixel_accuracy(task, alpha=100.0):
  """Accuracy of a one-vs-rest ridge classifier on raw (2x2-pooled) RGB pixels."""
  def pixels(images):
    n, s = images.shape[:2]
    x = images.reshape(n, s // 2, 2, s // 2, 2, 3).mean((2, 4)).reshape(n, -1) / 255.0
    return np.concatenate([x, np.ones((n, 1))], 1)
  x, k = pixels(task.train.images), task.num_classes
  targets = 2.0 * np.eye(k)[task.train.labels] - 1.0
  w = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ targets)
  return np.mean((pixels(task.test.images) @ w).argmax(1) == task.test.labels)


def test_tasks_are_learnable_but_not_trivial():
  from sklearn.ensemble import ExtraTreesClassifier
  trees, linear = {}, {}
  for name in syn.DOWNSTREAM_TASKS:
    task = syn.make_task(name, seed=0, image_size=32, value_range="unit", num_train=800,
                         num_val=0, num_test=400)
    clf = ExtraTreesClassifier(n_estimators=100, random_state=0, n_jobs=1)
    clf.fit(_features(task.train.images), task.train.labels)
    trees[name] = clf.score(_features(task.test.images), task.test.labels)
    linear[name] = _ridge_pixel_accuracy(task)
  chance = {name: 1.0 / syn.num_classes(name) for name in trees}
  # Learnable: simple features + trees are far above chance on every task ...
  assert all(trees[n] > 3.0 * chance[n] for n in trees), trees
  # ... a linear model on raw pixels is above chance everywhere but far from perfect on
  # most, and not even the feature classifier is perfect on every task.
  assert all(linear[n] > 1.3 * chance[n] for n in linear), linear
  assert sum(acc < 0.5 for acc in linear.values()) >= 3, linear
  assert min(trees.values()) < 0.9, trees


def test_example_grid(tmp_path):
  path = syn.save_example_grid(str(tmp_path / "grid.png"), tasks=("count", "digits"),
                               per_task=3, image_size=32)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
