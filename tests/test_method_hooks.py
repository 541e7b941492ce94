"""A method defined entirely in this file runs through the normal engine.

The toy method adds a delta on every value projection (the `project` hook) and a side
head with BatchNorm reading the last block's tokens (the `head` hook), so it needs the
engine to carry model state (`batch_stats`): train mode updates it, evaluation uses
the running statistics, checkpoints restore it, and the adapter exports it.
"""

import dataclasses
import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heat_jax import artifacts, experiment
from heat_jax.data import build_task
from heat_jax.methods import Method, MethodContext, register_method
from heat_jax.models.extensions import Extension, register_extension
from heat_jax.training import partition
from heat_jax.training.metrics import read_metric

SIDE = 6


@register_extension
@dataclasses.dataclass(frozen=True)
class ToySpec(Extension):
  """A zero-initialised dense delta on `value`, and a BatchNorm side classifier."""

  kind = "toy_hooks"
  param_names = ("toy_delta", "toy_side")
  families = ("vit",)

  def project(self, host, site, name, x, y, *, shared, deterministic):
    if name != "value":
      return y
    delta = nn.Dense(y.shape[-2] * y.shape[-1], kernel_init=nn.initializers.zeros,
                     name="toy_delta")(x)
    return y + delta.reshape(y.shape)

  def head(self, host, features, tokens, num_classes, *, shared, train):
    pooled = jnp.mean(tokens.blocks[-1][:, tokens.num_prefix:], axis=1)
    h = nn.Dense(SIDE, name="toy_side")(pooled)
    h = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                     momentum=0.5, name="toy_bn")(h)
    return nn.Dense(num_classes, name="head")(h)


@register_method
class ToyMethod(Method):
  name = "toy_hooks"

  def extensions(self):
    return (ToySpec(),)

  def trainable_mask(self, ctx: MethodContext):
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: "toy_" in k)
    return self.with_head(ctx.params, mask)


@pytest.fixture
def toy_config(tiny_config):
  c = tiny_config
  c.method.name = "toy_hooks"
  c.train.epochs = 4
  c.train.eval_every_epochs = 2
  c.train.checkpoint_every_steps = 3
  c.optim.lr = 1e-2
  return c


def _adapter(workdir):
  with np.load(workdir / "adapter.npz", allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def test_toy_method_trains_evaluates_with_running_stats_and_exports(toy_config, tmp_path):
  results = experiment.run(toy_config, str(tmp_path), quiet=True)
  meta = json.loads((tmp_path / "adapter.json").read_text())
  arrays = _adapter(tmp_path)

  # The adapter holds the trained values and, separately counted, the batch statistics.
  state_keys = sorted(k for k in arrays if k.startswith(artifacts.STATE_PREFIX))
  assert state_keys == [f"{artifacts.STATE_PREFIX}batch_stats/toy_bn/{s}"
                        for s in ("mean", "var")]
  assert meta["num_state_scalars"] == 2 * SIDE
  d, layers, classes = 32, 2, 4
  delta = layers * (d * d + d)
  side = d * SIDE + SIDE + SIDE * classes + classes
  assert results["trainable_params"] == meta["num_scalars"] == delta + side
  assert results["trainable_params_no_head"] == delta + d * SIDE + SIDE
  # Training moved the running statistics away from their initial values (0, 1).
  mean = arrays[f"{artifacts.STATE_PREFIX}batch_stats/toy_bn/mean"]
  var = arrays[f"{artifacts.STATE_PREFIX}batch_stats/toy_bn/var"]
  assert np.abs(mean).max() > 1e-3 and np.abs(var - 1).max() > 1e-3

  # Loss falls: the hooks are trained.
  loss = read_metric(tmp_path, "train/loss")
  assert np.mean(loss[-2:]) < 0.8 * np.mean(loss[:2]), loss

  # The reported accuracy is the eval-mode model with the running statistics: recompute
  # it from the exported adapter, and check the statistics matter.
  model, variables = artifacts.load_adapter(str(tmp_path))
  assert set(variables) == {"params", "batch_stats"}
  task = build_task(toy_config.data, image_size=32)
  batch = next(task.test.batches(task.test.num_examples))
  logits = model.apply(variables, batch["image"], train=False)
  acc = float(np.mean(np.argmax(logits, -1) == batch["label"]))
  assert acc == pytest.approx(results["test_top1"], abs=1e-6)
  shifted = jax.tree.map(lambda v: v + 3.0, variables["batch_stats"])
  other = model.apply({**variables, "batch_stats": shifted}, batch["image"], train=False)
  assert np.abs(np.asarray(other) - np.asarray(logits)).max() > 1e-3


def test_toy_method_resume_restores_batch_stats(toy_config, tmp_path, interrupted_run, caplog):
  experiment.run(toy_config, str(tmp_path / "a"), quiet=True)

  # after the checkpoint at step 3, before the next one
  interrupted_run(toy_config, str(tmp_path / "b"), at_step=5)
  caplog.set_level(logging.INFO, logger="absl")
  experiment.run(toy_config, str(tmp_path / "b"))
  assert "resumed from step 3" in caplog.text

  straight, resumed = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
  assert sorted(straight) == sorted(resumed)
  for key in straight:  # batch statistics included
    np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
