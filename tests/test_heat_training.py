"""HEAT training on the ViT: the selected heads really train (the loss falls far below
what the frozen backbone allows), and the head masks cover exactly the parameters."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from heat_jax import experiment
from heat_jax.methods.heat import head_weight_mask
from heat_jax.models import create_model
from heat_jax.training import partition
from heat_jax.training.metrics import read_metric


def _losses(workdir):
  return read_metric(workdir, "train/loss")


def test_heat_vit_loss_falls_below_the_frozen_backbone(tiny_config, tmp_path):
  """Same seed, data order, zero classifier and optimizer: `linear` trains only the
  classifier, which is exactly what a HEAT run whose head masks froze everything
  would do (its loss curve would be identical). Training 2 of the 4 heads must end
  far lower."""
  c = tiny_config
  c.data.num_train = 128
  c.train.batch_size = 32
  c.train.epochs = 6
  c.train.eval_every_epochs = 6
  c.train.log_every_steps = 1
  c.optim.lr = 1e-2
  c.importance.keep_probe = False   # both start from the zero classifier
  c.heat.budget = 2
  curves = {}
  for method in ("linear", "heat"):
    c.method.name = method
    experiment.run(c, str(tmp_path / method), quiet=True)
    curves[method] = _losses(tmp_path / method)
  linear, heat = curves["linear"], curves["heat"]
  assert len(linear) == len(heat) == 24
  assert heat[0] == linear[0]                        # the same starting point
  print(f"last-4-step mean loss: linear {np.mean(linear[-4:]):.3f}, heat "
        f"{np.mean(heat[-4:]):.3f}")
  # Observed: linear 1.00, heat 0.16.
  assert np.mean(heat[-4:]) < 0.5 * np.mean(linear[-4:]), (heat, linear)


def test_head_weight_mask_covers_exactly_the_parameters():
  """Bias masks only where the model has q/k/v biases (no stray keys)."""
  model = create_model("ViT-micro", 4)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  selected = np.array([[True, False], [False, True]])
  mask = head_weight_mask(params, selected)
  assert set(mask) == set(partition.flatten(params))
  attn = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0"
  np.testing.assert_array_equal(np.broadcast_to(mask[f"{attn}/key/bias"], (2, 16)),
                                [[False] * 16, [True] * 16])
  for block in params["Transformer"].values():
    if "MultiHeadDotProductAttention_0" in block:
      for proj in ("query", "key", "value"):
        del block["MultiHeadDotProductAttention_0"][proj]["bias"]
  mask = head_weight_mask(params, selected)
  assert set(mask) == set(partition.flatten(params))
  assert not any(k.endswith(("query/bias", "key/bias", "value/bias")) for k in mask)
