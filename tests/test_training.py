"""Training engine: masks, freezing guarantees, methods, artifacts, eval, resume."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heat_jax import artifacts, checkpoints, experiment
from heat_jax.data import build_task
from heat_jax.methods import available_methods, method_class
from heat_jax.methods.heat import head_lora_mask, head_weight_mask
from heat_jax.models import create_model
from heat_jax.methods.lora import LoraSpec
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer, epoch_batches
from heat_jax.training.metrics import read_metric


def _perturbed_params(model, seed=0):
  params = checkpoints.init_params(model, rng=jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape)
                      .astype(np.float32), params)


def _train(model, params, mask, config, steps):
  task = build_task(config.data, image_size=32)
  trainer = Trainer(model, params, mask, config.optim, total_steps=steps,
                    steps_per_epoch=task.train.num_examples // config.train.batch_size)
  state = trainer.initial_state()
  losses = []
  epoch = 0
  while len(losses) < steps:
    for batch in epoch_batches(task.train, config.train.batch_size, seed=0, epoch=epoch):
      state, metrics = trainer.train_step(state, batch)
      losses.append(float(metrics["loss"]))
      if len(losses) == steps:
        break
    epoch += 1
  return trainer.full_params(state), losses


def test_heat_head_weights_freeze_everything_else(tiny_config):
  model = create_model("ViT-micro", 4)
  params = _perturbed_params(model)
  selected = np.array([[True, False], [False, True]])
  mask = partition.union(head_weight_mask(params, selected),
                         partition.mask_from_predicate(params,
                                                       lambda k, _: partition.is_head(k)))
  after, _ = _train(model, params, mask, tiny_config, steps=6)
  before, after = partition.flatten(params), partition.flatten(after)
  for key in before:
    b, a = np.asarray(before[key]), np.asarray(after[key])
    if "MultiHeadDotProductAttention_0" not in key and not key.startswith("head"):
      assert np.array_equal(a, b), f"{key} moved"
      continue
    if key.startswith("head") or key.endswith("out/bias"):
      continue
    layer = int(key.split("encoderblock_")[1].split("/")[0])
    axis = 0 if "/out/" in key or key.endswith("bias") else 1
    for h in range(2):
      sl_b, sl_a = np.take(b, h, axis=axis), np.take(a, h, axis=axis)
      if selected[layer, h]:
        assert not np.array_equal(sl_a, sl_b), f"{key} head {h} did not move"
      else:
        assert np.array_equal(sl_a, sl_b), f"{key} head {h} moved"
  out_bias = [k for k in before if k.endswith("out/bias")]
  assert out_bias and all(np.array_equal(before[k], after[k]) for k in out_bias)


def test_heart_lora_masks_unselected_heads(tiny_config):
  spec = LoraSpec(rank=2, alpha=2.0)
  model = create_model("ViT-micro", 4, extensions=(spec,))
  params = _perturbed_params(model)
  selected = np.array([[True, False], [False, False]])
  mask = head_lora_mask(params, selected)
  assert mask["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/lora_query/a"] is False
  mask = partition.union(mask, partition.mask_from_predicate(
      params, lambda k, _: partition.is_head(k)))
  after, _ = _train(model, params, mask, tiny_config, steps=5)
  b = partition.flatten(after)["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
                               "lora_value/b"]
  b0 = partition.flatten(params)["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
                                 "lora_value/b"]
  assert not np.array_equal(b[:, 0], b0[:, 0])
  assert np.array_equal(b[:, 1], b0[:, 1])
  # Only the selected head's b columns and layer-0 a count as trainable.
  n = partition.count(params, mask, exclude=partition.is_head)
  d, r, hd = 32, 2, 16
  assert n == 2 * (d * r + r * hd)


# Every packaged method; heat, hst and kadaptation have learning tests of their own.
LEARN_ELSEWHERE = ("heat", "hst", "kadaptation")
PACKAGED = [m for m in available_methods()
            if method_class(m).__module__.startswith("heat_jax.methods.")]


@pytest.mark.parametrize("method", [m for m in PACKAGED if m not in LEARN_ELSEWHERE])
def test_each_method_learns(tiny_config, method, tmp_path):
  c = tiny_config
  c.method.name = method
  c.data.num_train = 96
  c.train.batch_size = 32
  c.train.epochs = 8
  c.optim.lr = 1e-2
  c.train.eval_every_epochs = 8
  experiment.run(c, str(tmp_path), quiet=True)
  loss = read_metric(tmp_path, "train/loss")
  assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:2]), loss


def test_lora_merge_equals_unmerged(tmp_path):
  spec = LoraSpec(rank=3, alpha=6.0)
  model = create_model("ViT-micro", 5, extensions=(spec,))
  params = _perturbed_params(model, seed=3)  # non-zero b: a real LoRA delta
  images = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
  want = model.apply({"params": params}, images)
  path = tmp_path / "merged.npz"
  artifacts.export_merged(str(path), model, params)
  keys = np.load(path, allow_pickle=False).files
  assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in keys
  assert not any("lora" in k for k in keys)
  plain = create_model("ViT-micro", 5)
  loaded = checkpoints.load_pretrained(str(path), plain)
  loaded["head"] = params["head"]
  got = plain.apply({"params": loaded}, images)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_adapter_roundtrip_and_counts(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "heat"
  c.heat.budget = 2
  results = experiment.run(c, str(tmp_path), quiet=True)
  meta = json.load(open(tmp_path / "adapter.json"))
  heads = np.load(tmp_path / "heads.npy", allow_pickle=False)
  assert heads.sum() == 2
  # 2 heads x (3 x (d*hd + hd) + hd*d) + head (d*C + C)
  d, hd, classes = 32, 16, 4
  assert results["trainable_params_no_head"] == 2 * (3 * (d * hd + hd) + hd * d)
  assert results["trainable_params"] == results["trainable_params_no_head"] + d * classes + classes
  model, variables = artifacts.load_adapter(str(tmp_path))
  params = variables["params"]
  task = build_task(c.data, image_size=32)
  batch = next(task.test.batches(8))
  got = model.apply({"params": params}, batch["image"])
  ckpt_dir = tmp_path / "checkpoints"
  assert ckpt_dir.exists()
  # Independent path: the final train state restored from the orbax checkpoint.
  assert meta["base"]["checkpoint"] is None
  want_acc = results["test_top1"]
  correct = total = 0
  for b in task.test.batches(8, pad=True):
    logits = np.asarray(model.apply({"params": params}, b["image"]))
    correct += ((logits.argmax(-1) == b["label"]) * b["mask"]).sum()
    total += b["mask"].sum()
  assert total == task.test.num_examples
  assert correct / total == pytest.approx(want_acc)
  assert got.shape == (8, 4)


def test_eval_counts_every_example(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "linear"
  c.data.num_test = 37  # not divisible by the eval batch of 16
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert results["num_test_examples"] == 37
  for record in results["history"]:
    assert 0.0 <= record["test_top1"] <= 1.0
    # 37 examples: accuracy is a multiple of 1/37.
    assert abs(record["test_top1"] * 37 - round(record["test_top1"] * 37)) < 1e-6


def test_resume_is_bit_identical(tiny_config, tmp_path, interrupted_run, caplog):
  c = tiny_config
  c.method.name = "lora"
  c.train.epochs = 3
  c.train.checkpoint_every_steps = 5
  straight = experiment.run(c, str(tmp_path / "a"), quiet=True)

  interrupted_run(c, str(tmp_path / "b"), at_step=8)
  caplog.set_level(logging.INFO, logger="absl")
  resumed = experiment.run(c, str(tmp_path / "b"))
  assert "resumed from step 5" in caplog.text
  assert resumed["test_top1"] == straight["test_top1"]
  a = np.load(tmp_path / "a" / "adapter.npz", allow_pickle=False)
  b = np.load(tmp_path / "b" / "adapter.npz", allow_pickle=False)
  assert a.files == b.files
  for k in a.files:
    assert np.array_equal(a[k], b[k]), k
  # A changed config must not silently resume.
  c.optim.lr = 0.5
  with pytest.raises(Exception, match="different config"):
    experiment.run(c, str(tmp_path / "b"), quiet=True)


def test_weight_decay_does_not_move_masked_elements():
  from heat_jax.training import optimizer
  import ml_collections
  optim = ml_collections.ConfigDict(dict(lr=0.1, weight_decay=0.5, wd_mask="all",
                                         clip_norm=1.0, warmup_epochs=0,
                                         warmup_init_lr=0.0, min_lr=0.0, b1=0.9, b2=0.999))
  params = {"w": jnp.ones((2, 3, 4))}
  masks = {"w": np.array([1.0, 0.0, 1.0], np.float32)[None, :, None]}
  tx, _ = optimizer.make_optimizer(optim, params, masks, total_steps=10, steps_per_epoch=1)
  state = tx.init(params)
  grads = {"w": jnp.full((2, 3, 4), jnp.nan).at[:, 0].set(1.0).at[:, 2].set(1.0)}
  updates, _ = tx.update(grads, state, params)
  new = optimizer.apply_masked_updates(params, updates, masks)
  assert np.array_equal(np.asarray(new["w"][:, 1]), np.ones((2, 4)))
  assert np.all(np.asarray(new["w"][:, 0]) < 1.0)


def test_bf16_compute_keeps_float32_params(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "lora"
  c.train.bf16 = True
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert np.isfinite(results["history"][-1]["test_top1"])
  stored = np.load(tmp_path / "adapter.npz", allow_pickle=False)
  assert all(stored[k].dtype == np.float32 for k in stored.files)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(l["train/loss"]) for l in lines if "train/loss" in l)


def test_data_parallel_mesh_matches_single_device(tmp_path):
  """Two emulated CPU devices shard the batch; results match one device closely."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  outs = {}
  from tests.conftest import subprocess_xla_flags
  for n in (1, 2):
    env = {**os.environ,
           "XLA_FLAGS": subprocess_xla_flags(f"--xla_force_host_platform_device_count={n}"),
           "HEAT_JAX_NO_TENSORBOARD": "1"}
    work = tmp_path / f"d{n}"
    proc = subprocess.run(
        [sys.executable, "run.py", "--config=configs/smoke.py:method=lora",
         f"--workdir={work}", "--config.train.progress=False"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs[n] = np.load(work / "adapter.npz", allow_pickle=False)
  for k in outs[1].files:
    np.testing.assert_allclose(outs[2][k], outs[1][k], rtol=1e-3, atol=1e-4)


def test_heat_deactivate_fraction(tiny_config, tmp_path):
  """The paper's form: a fraction of heads NOT adapted (overrides the budget)."""
  c = tiny_config
  c.method.name = "heat"
  c.train.epochs = 1
  c.heat.deactivate = 0.75          # ViT-micro has 2 x 2 heads: 3 deactivated, 1 kept
  experiment.run(c, str(tmp_path), quiet=True)
  assert np.load(tmp_path / "heads.npy", allow_pickle=False).sum() == 1
