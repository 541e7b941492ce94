"""Segmentation trains through the real engine: HST-seg and the decoders beat the
majority class on the synthetic task; a frozen backbone stays bit-identical."""

import json
import os
import subprocess
import sys

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
