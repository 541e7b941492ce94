"""HEAT and the PETL methods on a tiny Swin: same guarantees as on the ViT."""


import jax
import numpy as np
import pytest

from heat_jax import checkpoints, experiment
from heat_jax.importance import select_heads
from heat_jax.methods.heat import head_weight_mask
from heat_jax.models import create_model, head_layout
from heat_jax.training import partition
from heat_jax.training.metrics import read_metric
from tests.test_training import _train


@pytest.fixture
def swin_config(tiny_config):
  c = tiny_config
  c.model.name = "Swin-tiny"
  return c


def test_swin_head_weights_freeze_unselected(swin_config):
  model = create_model("Swin-tiny", 4)
  params = checkpoints.init_params(model, rng=jax.random.key(1))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape)
                        .astype(np.float32), params)
  layout = head_layout(model)
  assert layout.heads_per_layer == (2, 2, 4, 4)
  selected = np.zeros(layout.shape, bool)
  selected[0, 1] = selected[2, 0] = selected[3, 3] = True
  mask = partition.union(head_weight_mask(params, selected),
                         partition.mask_from_predicate(params,
                                                       lambda k, _: partition.is_head(k)))
  after, _ = _train(model, params, mask, swin_config, steps=5)
  before, after = partition.flatten(params), partition.flatten(after)
  rows = {("layers_0", "blocks_0"): 0, ("layers_0", "blocks_1"): 1,
          ("layers_1", "blocks_0"): 2, ("layers_1", "blocks_1"): 3}
  for key in before:
    b, a = np.asarray(before[key]), np.asarray(after[key])
    parts = key.split("/")
    if key.startswith("head") or key.endswith("out/bias") or "/attn/" not in key:
      if not key.startswith("head"):
        assert np.array_equal(a, b), f"{key} moved"
      continue
    row = rows[(parts[0], parts[1])]
    if key.endswith("relative_position_bias_table"):
      axis = 1
    elif "/out/" in key or key.endswith("bias"):
      axis = 0
    else:
      axis = 1
    for h in range(layout.heads_per_layer[row]):
      moved = not np.array_equal(np.take(a, h, axis), np.take(b, h, axis))
      assert moved == bool(selected[row, h]), (key, h)


def test_swin_layer_scope_fraction_per_stage():
  model = create_model("Swin-tiny", 4)
  layout = head_layout(model)
  scores = np.random.default_rng(0).random(layout.shape)
  chosen = select_heads(scores, 0.5, scope="layer", valid=layout.valid)
  assert chosen.sum(axis=1).tolist() == [1, 1, 2, 2]
  assert not chosen[~layout.valid].any()


@pytest.mark.parametrize("method,tune", [("heat", "head_weights"), ("heat", "lora"),
                                         ("lora", ""), ("adapter", "")])
def test_swin_methods_train(swin_config, tmp_path, method, tune):
  c = swin_config
  c.method.name = method
  if tune:
    c.heat.tune = tune
  c.heat.scope = "layer"
  c.heat.budget = 0.5
  c.data.num_train = 96
  c.train.batch_size = 32
  c.train.epochs = 6
  c.optim.lr = 1e-2
  c.train.eval_every_epochs = 6
  results = experiment.run(c, str(tmp_path), quiet=True)
  loss = read_metric(tmp_path, "train/loss")
  assert np.mean(loss[-2:]) < 0.85 * np.mean(loss[:2]), loss
  if method == "heat":
    heads = np.load(tmp_path / "heads.npy", allow_pickle=False)
    assert heads.sum(axis=1).tolist() == [1, 1, 2, 2]
    # Independent count: Swin-tiny stages of width (32, 64), head_dim 16, 49-row tables.
    if tune == "head_weights":   # per head: q/k/v kernel + bias, out rows, table column
      per_head = [3 * (w * 16 + 16) + 16 * w + 49 for w in (32, 32, 64, 64)]
    else:                        # Heart-LoRA rank 8 on q, v: b columns, plus a per layer
      per_head = [2 * 8 * 16] * 4
    want = sum(n * p for n, p in zip([1, 1, 2, 2], per_head))
    if tune == "lora":
      want += sum(2 * w * 8 for w in (32, 32, 64, 64))
    assert results["trainable_params_no_head"] == want


def test_vpt_is_rejected_on_swin(swin_config, tmp_path):
  from heat_jax.errors import ConfigError
  swin_config.method.name = "vpt"
  with pytest.raises(ConfigError, match="Swin"):
    experiment.run(swin_config, str(tmp_path), quiet=True)
