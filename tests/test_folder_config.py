"""`--config=folder:root=DIR`: your own images in one line (configs/folder.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heat_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fox")


def make_folder(root: Path, per_class: int = 10, classes=CLASSES) -> Path:
  """root/<class>/*.jpg|png: a colour per class, noise on top."""
  rng = np.random.default_rng(0)
  for ci, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      a = rng.integers(0, 60, (40, 36, 3)).astype(np.uint8)
      a[..., ci % 3] += 180
      Image.fromarray(a).save(root / name / (f"{i}.png" if i % 2 else f"{i}.jpg"))
  return root


def _config(arg: str):
  from configs import folder
  return folder.get_config(arg)


def test_three_class_folder_through_run_py_from_another_directory(tmp_path):
  images = make_folder(tmp_path / "my images")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"),
         "HEAT_JAX_NO_TENSORBOARD": "1"}
  proc = subprocess.run(
      [sys.executable, str(ROOT / "run.py"), f"--config=folder:root={images},model=ViT-micro",
       "--config.train.epochs=2", "--config.train.progress=False", "--workdir=w"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((elsewhere / "w" / "results.json").read_text())
  assert results["num_classes"] == 3 and results["class_names"] == list(CLASSES)
  assert results["num_test_examples"] == 6           # the held-out 20% of 30 images
  assert results["task"] == "my images" and results["method"] == "heat"
  assert "batch size 24 (the training images) instead of 64" in proc.stderr
  assert "the other 20% of the images" in proc.stderr
  meta = json.loads((elsewhere / "w" / "adapter.json").read_text())
  assert meta["task"]["num_classes"] == 3


def test_held_out_split_is_disjoint_and_covers_the_pool(tmp_path):
  from heat_jax.data.folder import FolderDataset
  images = make_folder(tmp_path / "d")
  c = _config(f"root={images},holdout=0.3")
  ds = FolderDataset(str(images), ["."])
  train, test = ds.split(c.data.train_split), ds.split(c.data.test_split)
  assert len(train) == 21 and len(test) == 9
  assert not {p for p, _ in train} & {p for p, _ in test}
  assert len({p for p, _ in train + test}) == 30
  assert c.train.batch_size == 21 and c.data.val_split == ""


@pytest.mark.parametrize("dirs,want", [
    (("train", "val", "test"), ("train", "val", "test")),
    (("train", "test"), ("train", "", "test")),
    (("train", "val"), ("train", "", "val")),       # val/ is the held-out split
    (("train",), ("train[:80%]", "", "train[80%:]")),
])
def test_split_layouts(tmp_path, dirs, want):
  for d in dirs:
    make_folder(tmp_path / d, per_class=3, classes=("a", "b"))
  c = _config(f"root={tmp_path},method=lora,rank=2")
  assert (c.data.train_split, c.data.val_split, c.data.test_split) == want
  assert c.method.name == "lora" and c.lora.rank == 2 and c.data.num_classes == 0


@pytest.mark.parametrize("arg,needle", [
    ("", "needs the image folder"), ("root=/no/such/dir", "is not a directory"),
    ("root={d},holdout=1.5", "holdout=1.5"), ("root={d},method=linear,rank=4", "no rank"),
])
def test_bad_arguments(tmp_path, arg, needle):
  make_folder(tmp_path / "d", per_class=2)
  with pytest.raises(ConfigError, match=needle):
    _config(arg.format(d=tmp_path / "d"))
