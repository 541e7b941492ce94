"""Segmentation data: synthetic masks, ADE20K folder layout + mmseg pipeline, offline error."""

import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from heat_jax.data import ade20k, build_task, seg_pipeline, seg_synthetic
from heat_jax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(**kw):
  c = ml_collections.ConfigDict(dict(
      source="seg_synthetic", num_classes=4, num_train=12, num_val=4, num_test=6,
      synthetic_seed=0, train_split="", val_split="", test_split="", value_range="unit",
      resize_method="bilinear", folder_root="", data_dir="", tfds_name=""))
  c.update(kw)
  return c


def test_synthetic_masks_follow_the_colours_and_are_seeded():
  task = build_task(_data(), image_size=32)
  a = next(task.train.batches(8))
  b = next(build_task(_data(), image_size=32).train.batches(8))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  other = next(build_task(_data(synthetic_seed=1),
                          image_size=32).train.batches(8))
  assert not np.array_equal(a["label"], other["label"])
  labels, images = a["label"], a["image"]
  assert labels.shape == (8, 32, 32) and set(np.unique(labels)) <= {0, 1, 2, 3, 255}
  assert (labels == 255).any()                 # partly covered pixels are ignored
  # Foreground pixels are bright (objects), background ones dark: the masks match.
  value = images.max(-1)
  assert value[labels == 0].mean() < 0.4 < value[(labels > 0) & (labels < 255)].mean()
  # Class c's hue is (c - 1) / 3: class 1 pixels are red-dominant.
  red = images[labels == 1]
  assert (red[:, 0] > red[:, 2]).mean() > 0.9


def _fake_ade(root, n_train=3, n_val=2):
  rng = np.random.default_rng(0)
  for split, n in (("training", n_train), ("validation", n_val)):
    os.makedirs(os.path.join(root, "images", split))
    os.makedirs(os.path.join(root, "annotations", split))
    for i in range(n):
      h, w = (40, 60) if i % 2 else (50, 30)
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
          os.path.join(root, "images", split, f"ADE_{split}_{i:08d}.jpg"))
      ann = np.zeros((h, w), np.uint8)
      ann[:, w // 3:] = 1
      ann[h // 2:, :] = 150
      Image.fromarray(ann).save(os.path.join(root, "annotations", split,
                                             f"ADE_{split}_{i:08d}.png"))


def test_ade_folder_pipeline(tmp_path):
  _fake_ade(str(tmp_path))
  task = build_task(_data(source="ade20k", num_classes=150, folder_root=str(tmp_path)),
                    image_size=32)
  assert task.num_classes == 150 and task.train.num_examples == 3
  batch = next(task.train.batches(3, shuffle=True, seed=0, epoch=0, drop_remainder=True))
  assert batch["image"].shape == (3, 32, 32, 3) and batch["label"].shape == (3, 32, 32)
  assert set(np.unique(batch["label"])) <= {0, 149, 255}   # reduce_zero_label
  again = next(task.train.batches(3, shuffle=True, seed=0, epoch=0, drop_remainder=True))
  np.testing.assert_array_equal(batch["image"], again["image"])
  later = next(task.train.batches(3, shuffle=True, seed=0, epoch=1, drop_remainder=True))
  assert not np.array_equal(batch["image"], later["image"])
  # Evaluation: short side 512, batches of one canvas, every example once.
  shapes, count = [], 0
  for b in task.test.batches(4, pad=True):
    shapes.append(b["image"].shape[1:3])
    count += int(b["mask"].sum())
    assert b["label"].shape == b["image"].shape[:3]
  assert count == 2 and len(shapes) == 2
  assert all(min(s) == 512 and max(s) % 128 == 0 for s in shapes)


def test_reduce_zero_label_and_pipeline_steps():
  np.testing.assert_array_equal(ade20k.reduce_zero_label(np.array([[0, 1, 150]])),
                                [[255, 0, 149]])
  assert seg_pipeline.rescale_size((375, 500), (2048, 512)) == (512, 683)
  # cat_max_ratio: a crop of one class only is retried until two classes share it.
  label = np.zeros((100, 100), np.uint8)
  label[:, 90:] = 1
  image = np.zeros((100, 100, 3), np.uint8)
  rng = np.random.default_rng(0)
  crops = [seg_pipeline.random_crop(rng, image, label, (20, 20))[1] for _ in range(20)]
  two = [len(np.unique(c)) == 2 for c in crops]
  assert np.mean(two) > 0.5        # a random 20x20 crop holds class 1 only 1 in 8 times


def test_missing_folder_is_one_line(tmp_path):
  with pytest.raises(DataError, match="ADEChallengeData2016"):
    build_task(_data(source="ade20k", num_classes=150, folder_root=str(tmp_path / "none")),
               image_size=32)


def test_ade20k_config_fails_offline_in_seconds(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  tic = time.time()
  out = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"),
                        "--config=configs/ade20k.py", f"--workdir={tmp_path / 'w'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "folder_root" in errors[0] and "scene_parse150" in errors[0]
  assert time.time() - tic < 60
  work = tmp_path / "w"
  assert not work.exists() or not os.listdir(work)   # nothing half-written
