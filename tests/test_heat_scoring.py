"""HEAT scores heads with a non-zero classifier: a zero-initialised head (the vit_jax
default) would make every TIS exactly 0 and the selection the tie order."""

from __future__ import annotations

import jax
import numpy as np

from heat_jax import checkpoints, experiment
from heat_jax.data import build_task
from heat_jax.importance import compute_tis
from heat_jax.methods.heat import scoring_params
from heat_jax.models import create_model


def test_scoring_params_replaces_only_a_zero_classifier():
  model = create_model("ViT-micro", 4)
  params = jax.device_get(checkpoints.init_params(model, rng=jax.random.key(0)))
  assert not np.any(params["head"]["kernel"])            # vit_jax: zeros
  scored, replaced = scoring_params(params, seed=3)
  kernel = scored["head"]["kernel"]
  assert replaced and kernel.shape == params["head"]["kernel"].shape
  assert kernel.dtype == params["head"]["kernel"].dtype and np.all(kernel != 0)
  assert 0.5 < np.std(kernel) * np.sqrt(kernel.shape[0]) < 2.0   # LeCun scale
  assert not np.any(params["head"]["kernel"])            # the input is not modified
  assert scored["Transformer"] is params["Transformer"]
  np.testing.assert_array_equal(scoring_params(params, seed=3)[0]["head"]["kernel"], kernel)
  kept, replaced = scoring_params(scored, seed=3)
  assert not replaced and kept is scored


def test_heat_run_ranks_heads_by_nonzero_scores(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "heat"
  c.heat.budget = 2
  task = build_task(c.data, model_family="vit", image_size=32)
  model = create_model("ViT-micro", task.num_classes)
  params = checkpoints.init_params(model, rng=jax.random.key(c.seed))
  zero = compute_tis(model, params, task.train.batches(16, pad=True), num_batches=2)
  assert not np.any(zero)                                 # the failure mode
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert results["method_info"]["tis_classifier"].startswith("random")
  scores = np.load(tmp_path / "importance.npy")
  heads = np.load(tmp_path / "heads.npy")
  assert np.all(scores > 0) and len(np.unique(scores)) == scores.size
  assert heads.sum() == 2 and scores[heads].min() > scores[~heads].max()
