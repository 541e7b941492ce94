"""Segmentation metrics, loss and sliding-window inference against independent
computations (hand-made confusion case, sklearn, per-pixel models)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heat_jax.segmentation import inference, metrics


def _miou_by_hand(pred, label, k, ignore):
  """Per-class loops over the pixels (no confusion matrix): IoU over present classes."""
  keep = label != ignore
  ious = []
  for c in range(k):
    inter = np.sum((pred == c) & (label == c) & keep)
    union = np.sum(((pred == c) | (label == c)) & keep)
    if union:
      ious.append(inter / union)
  return np.mean(ious), np.sum((pred == label) & keep) / np.sum(keep)


def test_hand_made_case_with_ignore_and_absent_classes():
  # 5 classes: 3 never appears anywhere (NaN, left out); 4 is only predicted (IoU 0).
  label = np.array([[0, 0, 1, 1], [2, 2, 255, 255], [0, 1, 2, 0]])[None]
  pred = np.array([[0, 1, 1, 1], [2, 4, 0, 3], [0, 1, 2, 2]])[None]
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 5))
  assert cm.sum() == 10                       # the two 255 pixels are not counted
  s = metrics.scores(cm)
  # By hand: class 0: TP 2, FN 2 (one ->1, one ->2), FP 0 -> 2/4; class 1: TP 3,
  # FP 1 -> 3/4; class 2: TP 2, FN 1 (->4), FP 1 -> 2/4; class 4: 0/1; class 3: NaN
  # (its only prediction is on an ignored pixel).
  assert np.isnan(s["iou"][3])
  assert s["iou"][4] == 0.0
  np.testing.assert_allclose(s["miou"], np.mean([2 / 4, 3 / 4, 2 / 4, 0.0]))
  np.testing.assert_allclose(s["pixel_acc"], 7 / 10)
  miou, acc = _miou_by_hand(pred, label, 5, 255)
  np.testing.assert_allclose([s["miou"], s["pixel_acc"]], [miou, acc])


def test_padding_rows_are_not_counted():
  label = np.zeros((2, 3, 3), np.int32)
  pred = np.ones((2, 3, 3), np.int32)
  cm = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 2,
                                mask=jnp.asarray([1.0, 0.0]))
  np.testing.assert_array_equal(np.asarray(cm), [[0, 9], [0, 0]])


def test_random_maps_against_sklearn():
  sklearn = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  k = 7
  label = rng.integers(0, k, (4, 16, 16))
  label[rng.random(label.shape) < 0.1] = 255
  label[label == 5] = 6                       # class 5 never in the ground truth...
  pred = rng.integers(0, k, (4, 16, 16))
  pred[pred == 5] = 4                         # ...nor predicted: NaN, excluded
  total = np.zeros((k, k), np.int64)
  for i in range(4):                          # accumulated over "batches"
    total += np.asarray(metrics.confusion_matrix(jnp.asarray(pred[i:i + 1]),
                                                 jnp.asarray(label[i:i + 1]), k))
  keep = label != 255
  y, p = label[keep], pred[keep]
  np.testing.assert_array_equal(total, sklearn.confusion_matrix(y, p, labels=range(k)))
  present = [c for c in range(k) if c != 5]
  s = metrics.scores(total)
  np.testing.assert_allclose(s["miou"], sklearn.jaccard_score(y, p, labels=present,
                                                              average="macro"))
  np.testing.assert_allclose(s["pixel_acc"], sklearn.accuracy_score(y, p))


def test_pixel_cross_entropy_ignores_pixels():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 4, 4))
  labels[0, 0] = 255
  keep = labels != 255
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.mean(np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep])
  got = metrics.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def _pixelwise(seed=0, c=3):
  """A per-pixel model (1x1 'conv'): translation-equivariant, so windows are exact."""
  w = jax.random.normal(jax.random.key(seed), (3, c))
  return lambda x: jnp.einsum("bhwd,dc->bhwc", x, w) + jnp.sin(x[..., :1] * 3)


def test_slide_equals_single_pass_when_the_window_covers_the_image():
  x = jax.random.normal(jax.random.key(1), (2, 12, 20, 3))
  calls = []
  conv = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))

  def forward(images):       # not translation-equivariant at the borders (SAME conv)
    calls.append(images.shape)
    return jax.lax.conv_general_dilated(images, conv, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  whole = inference.logits(forward, x, mode="whole")
  slide = inference.logits(forward, x, mode="slide", crop=(12, 20), stride=(8, 8))
  assert calls[-1] == (2, 12, 20, 3)             # one window
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_overlapping_windows_average_a_pixelwise_model_exactly():
  f = _pixelwise()
  x = jax.random.normal(jax.random.key(3), (1, 23, 30, 3))
  boxes = inference.windows((23, 30), (8, 8), (5, 5))
  assert boxes[-1] == (15, 23, 22, 30)           # last windows end at the border
  assert len(boxes) == 4 * 6
  slide = inference.logits(f, x, mode="slide", crop=(8, 8), stride=(5, 5))
  np.testing.assert_allclose(np.asarray(slide), np.asarray(f(x)), rtol=1e-5, atol=1e-5)
  # A small image is padded to the crop and the padding cut away.
  small = x[:, :5, :6]
  np.testing.assert_allclose(
      np.asarray(inference.logits(f, small, mode="slide", crop=(8, 8), stride=(5, 5))),
      np.asarray(f(small)), rtol=1e-5, atol=1e-5)


def test_flip_and_scales_average_softmax():
  f = _pixelwise(c=4)
  x = jax.random.normal(jax.random.key(4), (1, 8, 8, 3))
  p = inference.probabilities(f, x, out_hw=(8, 8), mode="whole", scales=(1.0,), flip=True)
  # A pixelwise model gives the same view flipped: the average is the plain softmax.
  np.testing.assert_allclose(np.asarray(p), np.asarray(jax.nn.softmax(f(x), -1)), atol=1e-6)
  p2 = inference.probabilities(f, x, out_hw=(8, 8), mode="whole", scales=(0.5, 1.0))
  small = jax.image.resize(x, (1, 4, 4, 3), "bilinear", antialias=False)
  back = jax.image.resize(f(small), (1, 8, 8, 4), "bilinear", antialias=False)
  want = (jax.nn.softmax(f(x), -1) + jax.nn.softmax(back, -1)) / 2
  np.testing.assert_allclose(np.asarray(p2), np.asarray(want), atol=1e-6)
