"""Segmentation trains through the real engine: HST-seg and the decoders beat the
majority class on the synthetic task; a frozen backbone stays bit-identical."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from configs.smoke_seg import get_config
from heat_jax.data.seg_synthetic import generate_split
from heat_jax import experiment
from heat_jax.data import build_task
from heat_jax.loop import train
from heat_jax.training import partition
from heat_jax.weights import load_weights


def majority_miou(config) -> float:
  """mIoU of predicting the most frequent class everywhere, from the test labels alone."""
  task = build_task(config.data, image_size=config.model.image_size)
  labels = np.concatenate([b["label"] for b in task.test.batches(64)])
  valid = labels[labels != 255]
  counts = np.bincount(valid, minlength=task.num_classes)
  top = int(np.argmax(counts))
  present = int((counts > 0).sum())
  return counts[top] / valid.size / present    # IoU of `top`; 0 for the other classes


def test_linear_keeps_the_backbone_bit_identical_and_learns(tmp_path):
  config = get_config("method=linear,decoder=upernet,steps=30")
  config.train.progress = False
  method = experiment.validate(config)
  p = experiment.prepare(config, str(tmp_path), method, experiment.config_fingerprint(config),
                         logging.info)
  try:
    state, history, _ = train(p, logging.info)
  finally:
    p.ckpt.close()
  after = partition.flatten(p.trainer.full_params(state))
  before = partition.flatten(load_weights(config, p.model)[0])
  frozen = [k for k in before if not partition.is_head(k)]
  assert frozen and all(np.array_equal(np.asarray(before[k]), np.asarray(after[k]))
                        for k in frozen)
  assert any(not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))
             for k in before if partition.is_head(k))
  assert history[-1]["test_miou"] > majority_miou(config) + 0.05


def test_hst_with_semantic_fpn_beats_the_majority_class(tmp_path):
  config = get_config("method=hst,decoder=fpn,steps=30")
  config.train.progress = False
  results = experiment.run(config, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["test_miou"] == results["test_miou"]
  assert 0.0 <= on_disk["test_pixel_acc"] <= 1.0
  assert results["test_miou"] > majority_miou(config) + 0.05
  assert os.path.exists(tmp_path / "adapter.npz")
  assert results["method_info"]["hst"]["widths"] == [16, 16, 32, 32]

  # predict writes one palette PNG per image with class indices, at the image's size.
  images, labels = generate_split("test", 1, seed=5, size=64)
  Image.fromarray(images[0]).save(tmp_path / "shape.png")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "heat_jax.predict", f"--workdir={tmp_path}",
                        f"--mask_dir={tmp_path / 'masks'}", "--noprogress",
                        str(tmp_path / "shape.png")], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": root}, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  with Image.open(tmp_path / "masks" / "shape.png") as mask:
    assert mask.mode == "P" and mask.size == (64, 64)
    pred = np.asarray(mask)
  assert pred.max() < 4
  keep = labels[0] != 255
  assert (pred[keep] == labels[0][keep]).mean() > 0.5     # mostly right


def _reference_seg_loss(model, params, model_state, image, label, num_classes):
  """Mean cross-entropy over labelled pixels of the eval-mode model (whose output is the
  main head alone: the auxiliary FCN head is a training-time branch), written out here
  independently of heat_jax.segmentation and the task kind."""
  logits = model.apply({"params": params, **model_state}, image, train=False)
  assert logits.shape[-1] == num_classes   # eval mode: no auxiliary channels
  valid = (label != 255).astype(jnp.float32)
  onehot = jax.nn.one_hot(jnp.where(label == 255, 0, label), num_classes)
  nll = -(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1) * onehot).sum(-1)
  return (nll * valid).sum() / valid.sum()


def _reference_head_scores(grads, params, layers):
  """Per-head sum of |theta * dL/dtheta| over q, k, v (kernel; q and v bias too) and out."""
  scores = []
  for i in range(layers):
    p = params["Transformer"][f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]
    g = grads["Transformer"][f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]
    row = np.abs(np.asarray(p["out"]["kernel"]) * np.asarray(g["out"]["kernel"])).sum((1, 2))
    for name in ("query", "key", "value"):
      row = row + np.abs(np.asarray(p[name]["kernel"]) * np.asarray(g[name]["kernel"])
                         ).sum((0, 2))
      if name != "key":
        row = row + np.abs(np.asarray(p[name]["bias"]) * np.asarray(g[name]["bias"])).sum(1)
    scores.append(row)
  return np.stack(scores)


def test_heat_scores_heads_through_the_segmentation_loss_and_trains_only_them(tmp_path):
  """HEAT on a segmentation task end to end: TIS is the gradient of the per-pixel loss of
  the eval-mode model through the fresh decoder, checked against a loss and per-head sums
  written out here; training then changes only the selected heads (and the
  decoder); results.json holds test_miou / test_pixel_acc."""
  from heat_jax import artifacts
  config = get_config("method=heat,decoder=upernet,steps=4")
  config.train.progress = False
  results = experiment.run(config, str(tmp_path), quiet=True)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert 0.0 <= on_disk["test_miou"] <= 1.0 and 0.0 <= on_disk["test_pixel_acc"] <= 1.0
  assert on_disk["test_miou"] == results["test_miou"]
  scores = np.load(tmp_path / "importance.npy", allow_pickle=False)
  selected = np.load(tmp_path / "heads.npy", allow_pickle=False)
  assert selected.sum() == config.heat.budget

  model, variables = artifacts.load_adapter(str(tmp_path))
  before, model_state, _ = load_weights(config, model)
  task = build_task(config.data, image_size=config.model.image_size)
  batches = list(itertools.islice(task.train.batches(config.importance.batch_size, pad=True),
                                  config.importance.num_batches))
  grad = jax.jit(jax.grad(_reference_seg_loss, argnums=1), static_argnums=(0, 5))
  want = np.zeros(scores.shape)
  for batch in batches:
    assert np.all(batch["mask"] == 1)   # full batches: each weighs the same
    g = grad(model, before, model_state, batch["image"], batch["label"],
             config.data.num_classes)
    want += _reference_head_scores(g, before, scores.shape[0]) / len(batches)
  np.testing.assert_allclose(scores, want, rtol=2e-3, atol=1e-6 * np.abs(want).max())

  after = partition.flatten(variables["params"])
  before = partition.flatten(before)
  changed = {k for k in before if not np.array_equal(np.asarray(before[k]),
                                                     np.asarray(after[k]))}
  assert any(partition.is_head(k) for k in changed)   # the decoder trains
  body = sorted(k for k in changed if not partition.is_head(k))
  assert body and all("MultiHeadDotProductAttention_0" in k for k in body), body
  for i, layer in enumerate(selected):   # per head: moved iff selected
    attn = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0"
    delta = np.abs(np.asarray(after[f"{attn}/query/kernel"])
                   - np.asarray(before[f"{attn}/query/kernel"])).sum((0, 2))
    np.testing.assert_array_equal(delta > 0, layer.astype(bool))
