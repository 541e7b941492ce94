"""Heart-LoRA (`heat.tune = 'lora'`): unselected heads get no update whatever the LoRA
factors hold, because the per-head delta is masked in the forward pass.

Both LoRA factors start non-zero here (a plain LoRA starts with b = 0, which would hide a
missing forward mask), and the run goes through the HEAT method (mask, trained
extensions) and the Trainer. The reference is a plain model (no LoRA extension) whose
q/v kernels get `scale * a @ b[:, h]` folded in, in numpy, for the SELECTED heads only.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from heat_jax import checkpoints, experiment
from heat_jax.data import build_task
from heat_jax.methods import MethodContext, get_method
from heat_jax.models import create_model, head_layout, model_info
from heat_jax.models.attention_paths import attention_paths, get_subtree
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer, epoch_batches

SELECTED = {  # (layer rows) at least one layer with no selected head
    "ViT-micro": [[True, False], [False, False]],
    "Swin-micro": [[True, False], [False, False], [True, False], [False, True]],  # (1, 1, 2, 2)
}


def _folded(params, selected, targets, scale):
  """Plain-model parameters: LoRA deltas of selected heads folded into the kernels."""
  flat = {k: np.array(v, np.float64) for k, v in partition.flatten(params).items()}
  for row, path in enumerate(attention_paths(params)):
    node, prefix = get_subtree(params, path), "/".join(path)
    for t in targets:
      a, b = np.asarray(node[f"lora_{t}"]["a"]), np.asarray(node[f"lora_{t}"]["b"])
      heads = b.shape[1]
      delta = np.einsum("dr,rhk->dhk", a, b) * scale
      delta *= np.asarray(selected[row][:heads], np.float64)[None, :, None]
      flat[f"{prefix}/{t}/kernel"] += delta
  plain = {k: v.astype(np.float32) for k, v in flat.items() if "lora_" not in k}
  return partition.unflatten(plain)


@pytest.mark.parametrize("name", ["ViT-micro", "Swin-micro"])
def test_unselected_heads_get_no_update_with_nonzero_factors(tiny_config, name):
  c = tiny_config
  c.model.name = name
  c.method.name = "heat"
  c.heat.tune = "lora"
  c.lora.rank = 2
  c.lora.alpha = 4.0
  c.optim.lr = 1e-2
  selected = np.asarray(SELECTED[name], bool)
  task = build_task(c.data, image_size=32, auto_value_range=model_info(name).value_range)
  method = get_method(c)
  model0, _ = experiment.build_model(c, task.num_classes, method.extensions())
  assert head_layout(model0).shape == selected.shape
  params = checkpoints.init_params(model0, rng=jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.3 * rng.standard_normal(p.shape)
                        .astype(np.float32), params)                  # a, b != 0
  method.restore({"selected": selected.tolist()})
  ctx = MethodContext(config=c, model=model0, params=params, task=task)
  mask = method.trainable_mask(ctx)
  model, _ = experiment.build_model(c, task.num_classes, method.trained_extensions())
  steps = 6
  trainer = Trainer(model, params, mask, c.optim, total_steps=steps,
                    steps_per_epoch=task.train.num_examples // c.train.batch_size)
  state = trainer.initial_state()
  for i, batch in enumerate(epoch_batches(task.train, c.train.batch_size, seed=0, epoch=0)):
    if i == steps:
      break
    state, _ = trainer.train_step(state, batch)
  after = jax.device_get(trainer.full_params(state))

  targets, scale = ("query", "value"), c.lora.alpha / c.lora.rank
  images = next(task.test.batches(8))["image"]
  plain = create_model(name, task.num_classes)
  for p in (params, after):
    want = plain.apply({"params": _folded(p, selected, targets, scale)}, images)
    got = model.apply({"params": p}, images)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Without the forward mask (a mask on the factors' updates only) the unselected
    # heads' non-zero deltas reach the output: that model disagrees.
    unmasked = model0.apply({"params": p}, images)
    assert np.abs(unmasked - want).max() > 1e-2

  before, moved = partition.flatten(params), partition.flatten(after)
  for row, path in enumerate(attention_paths(params)):
    prefix = "/".join(path)
    for t in targets:
      a0, a1 = before[f"{prefix}/lora_{t}/a"], moved[f"{prefix}/lora_{t}/a"]
      b0, b1 = before[f"{prefix}/lora_{t}/b"], moved[f"{prefix}/lora_{t}/b"]
      for h in range(b0.shape[1]):
        if selected[row, h]:
          assert not np.array_equal(b0[:, h], b1[:, h]), (prefix, t, h)
        else:
          assert np.array_equal(b0[:, h], b1[:, h]), (prefix, t, h)
      # `a` is shared by the layer's heads: it trains only where a head is selected.
      # (So a @ b[:, h] of an unselected head may change there; the forward mask keeps it
      # out of the model, which the output check above verifies.)
      assert np.array_equal(a0, a1) == (not selected[row].any()), (prefix, t)
      if not selected[row].any():
        np.testing.assert_array_equal(np.einsum("dr,rhk->dhk", a1, b1),
                                      np.einsum("dr,rhk->dhk", a0, b0))
