"""`configs/vtab.py:<task>` trains and evaluates end to end on a local folder copy."""

import json

import numpy as np
from PIL import Image

from configs import vtab
from heat_jax import experiment


def _write_folder(root, split, num_classes, per_class, seed):
  rng = np.random.default_rng(seed)
  for c in range(num_classes):
    d = root / split / f"class_{c:02d}"
    d.mkdir(parents=True)
    for i in range(per_class):
      img = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8)
      img[..., c % 3] += np.uint8(40 + 4 * c)    # class-dependent colour
      Image.fromarray(img).save(d / f"{i}.png")


def test_dtd_config_on_a_folder_copy(tmp_path):
  root = tmp_path / "dtd"
  _write_folder(root, "train800val200", 47, 2, seed=0)
  _write_folder(root, "test", 47, 1, seed=1)
  c = vtab.get_config(f"dtd,source=folder,root={root},epochs=2")
  assert c.data.num_classes == 47 and c.data.source == "folder"
  c.model.name = "ViT-micro"
  c.model.pretrained = ""
  c.model.image_size = 32
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.progress = False
  c.train.eval_every_epochs = 1
  c.importance.batch_size = 16
  c.heat.budget = 2
  results = experiment.run(c, str(tmp_path / "work"), quiet=True)
  assert results["task"].startswith("dtd")
  assert results["num_test_examples"] == 47
  assert results["value_range"] == "minus1_1"
  assert results["trainable_params"] > results["trainable_params_no_head"] > 0
  assert json.loads((tmp_path / "work" / "results.json").read_text())["method"] == "heat"
  assert (tmp_path / "work" / "importance.png").exists()
