"""The classifier HEAT scores heads through (`importance.classifier`) and the run's record.

A zero-initialised head (the vit_jax default) makes every TIS exactly 0; HEAT scores
through a linear probe fitted on the frozen features (default), a seeded random head,
or the model's own head.
"""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from heat_jax import checkpoints, experiment
from heat_jax.data import build_task
from heat_jax.errors import ConfigError
from heat_jax.importance import compute_tis, head_features
from heat_jax.methods import MethodContext, get_method
from heat_jax.methods.heat import random_classifier, scoring_params
from heat_jax.models import create_model


def _zero_head_params(seed=0):
  model = create_model("ViT-micro", 4)
  return model, jax.device_get(checkpoints.init_params(model, rng=jax.random.key(seed)))


def test_random_classifier_is_seeded_lecun_normal():
  _, params = _zero_head_params()
  assert not np.any(params["head"]["kernel"])            # vit_jax: zeros
  scored = random_classifier(params, seed=3)
  kernel = scored["head"]["kernel"]
  assert kernel.shape == params["head"]["kernel"].shape and kernel.dtype == np.float32
  assert 0.5 < np.std(kernel) * np.sqrt(kernel.shape[0]) < 2.0   # LeCun scale
  assert not np.any(scored["head"]["bias"])
  assert not np.any(params["head"]["kernel"])            # the input is not modified
  assert scored["Transformer"] is params["Transformer"]
  np.testing.assert_array_equal(random_classifier(params, seed=3)["head"]["kernel"], kernel)
  assert not np.array_equal(random_classifier(params, seed=4)["head"]["kernel"], kernel)


def test_model_classifier_refuses_a_zero_head():
  model, params = _zero_head_params()
  with pytest.raises(ConfigError, match="classifier=probe"):
    scoring_params(model, params, [], classifier="model")
  with pytest.raises(ConfigError, match="classifier"):
    scoring_params(model, params, [], classifier="lstsq")


@pytest.mark.parametrize("field,value,match", [
    ("heat.budget", 5, "budget=5 exceeds the 4 heads"),
    ("heat.scope", "stage", "heat.scope"), ("heat.select", "worst", "heat.select"),
    ("importance.strategy", "taylor", "strategy"), ("importance.normalize", "l2", "normalize"),
    ("importance.classifier", "ridge", "importance.classifier"),
    ("importance.probe_l2", -1.0, "probe_l2")])
def test_bad_heat_options_fail_validation(tiny_config, field, value, match):
  c = tiny_config
  c.method.name = "heat"
  experiment.validate(c)
  c.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=match):
    experiment.validate(c)


def _sklearn_probe(x, y, classes, l2):
  """Independent probe: sklearn logistic regression on standardised features."""
  scaler = StandardScaler().fit(x)
  sk = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(
      scaler.transform(x), y)
  kernel = sk.coef_.T / scaler.scale_[:, None]
  bias = sk.intercept_ - scaler.mean_ @ kernel
  return kernel.astype(np.float32), bias.astype(np.float32), sk.score(scaler.transform(x), y)


def test_heat_scores_through_the_probe_and_starts_from_it(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "heat"
  c.importance.probe_l2 = 1e-2
  c.importance.keep_probe = True
  task = build_task(c.data, image_size=32)
  model, params = _zero_head_params(c.seed)
  method = get_method(c)
  ctx = MethodContext(config=c, model=model, params=params, task=task, workdir=str(tmp_path))
  method.trainable_mask(ctx)
  start = method.initial_params(ctx)

  x, y = head_features(model, params, task.train.batches(16, pad=True))
  kernel, bias, accuracy = _sklearn_probe(x, y, 4, l2=1e-2)
  np.testing.assert_allclose(start["head"]["kernel"], kernel, atol=5e-3 * np.abs(kernel).max())
  assert start["Transformer"] is params["Transformer"]
  info = method.info
  assert info["tis_classifier"] == "probe" and info["probe_kept"] is True
  assert info["probe_examples"] == 64
  assert info["probe_train_accuracy"] == pytest.approx(accuracy, abs=1.5 / 64)
  # The saved scores are TIS through that probe (independently fitted here).
  probe_params = {**params, "head": {"kernel": kernel, "bias": bias}}
  want = compute_tis(model, probe_params, task.train.batches(16, pad=True), num_batches=2,
                     progress=False)
  np.testing.assert_allclose(np.load(tmp_path / "importance.npy"), want, rtol=2e-2)
  assert np.all(want > 0)

  c2 = copy.deepcopy(c)
  c2.importance.keep_probe = False
  other = get_method(c2)
  ctx2 = MethodContext(config=c2, model=model, params=params, task=task)
  other.trainable_mask(ctx2)
  assert other.initial_params(ctx2) is params            # training starts from zeros
  assert other.info["tis_classifier"] == "probe" and "probe_kept" not in other.info

  c3 = copy.deepcopy(c)                                   # scored through a random head,
  c3.importance.classifier = "random"                     # trained from the probe
  third = get_method(c3)
  ctx3 = MethodContext(config=c3, model=model, params=params, task=task)
  third.trainable_mask(ctx3)
  np.testing.assert_array_equal(third.initial_params(ctx3)["head"]["kernel"],
                                start["head"]["kernel"])
  assert third.info["tis_classifier"] == "random" and third.info["probe_kept"] is True


def test_heat_run_records_the_classifier_and_resumes_it(tiny_config, tmp_path, interrupted_run):
  c = tiny_config
  c.method.name = "heat"
  c.train.epochs = 2
  c.train.checkpoint_every_steps = 3
  c.importance.keep_probe = True      # the probe-initialised head must survive a resume
  straight = experiment.run(c, str(tmp_path / "a"), quiet=True)
  info = straight["method_info"]
  assert info["tis_classifier"] == "probe" and info["probe_kept"] is True
  assert 0.25 < info["probe_train_accuracy"] <= 1.0

  interrupted_run(c, str(tmp_path / "b"), at_step=5)
  resumed = experiment.run(c, str(tmp_path / "b"), quiet=True)
  # The selection and the probe's record come from the checkpoint; the probe-initialised
  # head from the trained state: the resumed run ends bit-identical.
  assert resumed["method_info"]["selection_restored"] is True
  for key in ("tis_classifier", "probe_train_accuracy", "probe_kept"):
    assert resumed["method_info"][key] == info[key], key
  a = np.load(tmp_path / "a" / "adapter.npz", allow_pickle=False)
  b = np.load(tmp_path / "b" / "adapter.npz", allow_pickle=False)
  assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
  written = json.loads((tmp_path / "b" / "importance.json").read_text())
  assert written["classifier"] == "probe"
