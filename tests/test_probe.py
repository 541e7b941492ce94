"""The linear-probe classifier HEAT scores heads through (heat_jax.importance.probe)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from heat_jax.errors import DataError
from heat_jax.importance import fit_probe, head_features, with_probe
from heat_jax.models import create_model


def _data(seed, n=300, d=10, classes=4):
  """Features on very different scales and offsets (as LayerNorm'd features can be)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.geomspace(0.05, 20, d) + rng.normal(size=d) * 3
  w = rng.normal(size=(d, classes)) / np.geomspace(0.05, 20, d)[:, None]
  y = np.argmax(x @ w + 2 * rng.gumbel(size=(n, classes)), axis=1)
  return x.astype(np.float32), y


@pytest.mark.parametrize("l2", [1e-3, 3e-2])
def test_fit_probe_matches_sklearn_logistic_regression(l2):
  x, y = _data(0)
  probe = fit_probe(x, y, 4, l2=l2, tol=1e-6)
  # Independent: sklearn's L-BFGS on standardised features, C = 1 / (l2 n).
  scaler = StandardScaler().fit(x)
  sk = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(
      scaler.transform(x), y)
  want = sk.predict_proba(scaler.transform(x))
  logits = x @ probe.kernel + probe.bias
  got = np.exp(logits - logits.max(1, keepdims=True))
  got /= got.sum(1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=2e-3)
  kernel = sk.coef_.T / scaler.scale_[:, None]
  np.testing.assert_allclose(probe.kernel, kernel, atol=2e-3 * np.abs(kernel).max())
  assert probe.train_accuracy == pytest.approx(sk.score(scaler.transform(x), y), abs=2 / 300)
  nll = -np.log(want[np.arange(len(y)), y]).mean()
  assert probe.train_loss == pytest.approx(nll, rel=1e-3)
  assert 0 < probe.iterations <= 500 and probe.num_examples == 300


def test_fit_probe_rejects_bad_labels():
  x, y = _data(1)
  y[0] = 3
  with pytest.raises(DataError, match="labels"):
    fit_probe(x, y, 3)


@pytest.mark.parametrize("name", ["ViT-micro", "Swin-micro"])
def test_head_features_are_the_classifier_input(name):
  model = create_model(name, 3, head_init="lecun")
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(0)
  images = rng.normal(size=(10, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 10).astype(np.int32)
  mask = np.array([1] * 7 + [0] * 3, np.float32)
  batches = [{"image": images[:5], "label": labels[:5], "mask": mask[:5]},
             {"image": images[5:], "label": labels[5:], "mask": mask[5:]}]
  x, y = head_features(model, params, batches)
  assert x.shape == (7, np.shape(params["head"]["kernel"])[0]) and x.dtype == np.float32
  np.testing.assert_array_equal(y, labels[:7])
  # Independent: the model's own logits are the classifier applied to these features.
  logits = np.asarray(model.apply({"params": params}, images[:7]))
  np.testing.assert_allclose(x @ np.asarray(params["head"]["kernel"])
                             + np.asarray(params["head"]["bias"]), logits, atol=1e-4)


def test_with_probe_replaces_only_the_classifier():
  params = {"Transformer": {"cls": np.ones((1, 1, 32), np.float32)},
            "head": {"kernel": np.zeros((32, 4), np.float32),
                     "bias": np.zeros(4, np.float32)}}
  x, y = _data(2, d=32)
  probe = fit_probe(x, y, 4)
  new = with_probe(params, probe)
  np.testing.assert_array_equal(new["head"]["kernel"], probe.kernel)
  np.testing.assert_array_equal(new["head"]["bias"], probe.bias)
  assert new["Transformer"] is params["Transformer"]
  assert not np.any(params["head"]["kernel"])            # the input is not modified
  with pytest.raises(ValueError, match="does not fit"):
    with_probe(params, fit_probe(*_data(3, d=5), 4))
