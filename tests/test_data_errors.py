"""Bad data inputs fail at load time with one clear line (folder, synthetic, shared checks)."""

import os

import numpy as np
import pytest
from PIL import Image

from configs.common import base_config
from heat_jax.data import build_task, check_config, folder
from heat_jax.errors import ConfigError, DataError

SIZE = 8
COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def write_image(path, color=(90, 90, 90), fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (11, 9), color).save(path, fmt)


def make_split(root, split, classes=COLORS, n=2):
  for cls in classes:
    for i in range(n):
      write_image(root / split / cls / f"{cls}_{i}.png", COLORS.get(cls, (9, 9, 9)))


def folder_config(root, **overrides):
  c = base_config().data
  c.update(source="folder", folder_root=str(root), train_split="train", test_split="test")
  c.update(overrides)
  return c


def build(c, image_size=SIZE):
  return build_task(c, image_size=image_size)


def one_line_error(kind, c, match, image_size=SIZE):
  with pytest.raises(kind, match=match) as info:
    build(c, image_size)
  assert "\n" not in str(info.value)
  return str(info.value)


# ----------------------------------------------------------------------------- folder


def test_class_mismatch_between_splits_names_extra_and_missing(tmp_path):
  make_split(tmp_path, "train", ["cat", "dog", "eel"])
  make_split(tmp_path, "test", ["cat", "dog", "fox"])
  msg = one_line_error(DataError, folder_config(tmp_path), "class folders differ")
  assert "test/ has extra fox and missing eel (compared with train/)" in msg
  make_split(tmp_path, "val", ["cat"])
  msg = one_line_error(DataError, folder_config(tmp_path, val_split="val"), "differ")
  assert "val/ has missing dog, eel" in msg and "test/ has extra fox" in msg


def test_matching_classes_in_every_split_still_load(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test", n=1)
  task = build(folder_config(tmp_path))
  assert task.num_classes == 3 and task.info["classes"] == ["cat", "dog", "eel"]
  assert task.train.num_examples == 6 and task.test.num_examples == 3


def test_corrupt_test_image_is_named_at_load(tmp_path, monkeypatch):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  bad = tmp_path / "test" / "dog" / "dog_1.png"
  bad.write_bytes(b"\x89PNG not really")
  loads = []
  monkeypatch.setattr(folder, "make_splits", lambda *a, **k: loads.append(a))
  msg = one_line_error(DataError, folder_config(tmp_path), "1 of 6 images cannot be read")
  assert str(bad) in msg and "split 'test'" in msg
  assert not loads   # failed before any split was built


def test_truncated_jpeg_in_test_split_is_found_at_load(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  path = tmp_path / "test" / "eel" / "big.jpg"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
  path.write_bytes(path.read_bytes()[:600])
  msg = one_line_error(DataError, folder_config(tmp_path), "cannot be read")
  assert "big.jpg" in msg


def test_corrupt_train_image_is_named_at_load(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  (tmp_path / "train" / "cat" / "cat_0.png").write_bytes(b"garbage")
  one_line_error(DataError, folder_config(tmp_path), "cannot read image .*cat_0.png")


def test_hidden_entries_and_macos_debris_are_ignored(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
  (tmp_path / "test" / "__MACOSX").mkdir()
  (tmp_path / "test" / "cat" / "._cat_0.png").write_bytes(b"AppleDouble")
  task = build(folder_config(tmp_path))
  assert task.num_classes == 3 and task.test.num_examples == 6


def test_images_outside_class_folders(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  write_image(tmp_path / "test" / "stray.png")
  one_line_error(DataError, folder_config(tmp_path), "images outside class folders .*stray.png")


def test_list_file_errors_name_the_image(tmp_path):
  for cls in COLORS:
    write_image(tmp_path / "images" / f"{cls}.png", COLORS[cls])
  (tmp_path / "train.txt").write_text("images/cat.png 0\nimages/dog.png 1\nimages/eel.png 2\n")
  (tmp_path / "test.txt").write_text("images/cat.png 0\nimages/gone.png 1\n")
  one_line_error(DataError, folder_config(tmp_path, num_classes=3), "gone.png")
  (tmp_path / "test.txt").write_text("images/cat.png 0\nimages/dog.png 7\n")
  one_line_error(DataError, folder_config(tmp_path, num_classes=3),
                 r"dog.png has label 7, outside \[0, 3\)")
  (tmp_path / "test.txt").write_text("images/cat.png 0\nimages/dog.png\n")
  one_line_error(DataError, folder_config(tmp_path, num_classes=3), "test.txt:2: expected")


def test_bad_split_strings_and_roots(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  one_line_error(DataError, folder_config(tmp_path, test_split="tset"), "split 'tset' not found")
  one_line_error(DataError, folder_config(tmp_path, test_split="test[6:]"), "selects no images")
  one_line_error(DataError, folder_config(tmp_path, test_split="test[:7]"),
                 "bound 7 is beyond the 6 images of 'test'")
  assert build(folder_config(tmp_path, test_split="test[-6:50%]")).test.num_examples == 3
  one_line_error(ConfigError, folder_config(tmp_path, test_split="test[a:b]"), "bad slice bound")
  one_line_error(ConfigError, folder_config(tmp_path, test_split="test[:2"), "cannot parse split")
  one_line_error(ConfigError, folder_config(tmp_path, train_split=""), "train_split is empty")
  one_line_error(ConfigError, folder_config(""), "folder_root is empty")
  one_line_error(DataError, folder_config(tmp_path / "missing"), "is not a directory")
  one_line_error(DataError, folder_config(tmp_path / "train" / "cat" / "cat_0.png"),
                 "is not a directory")
  (tmp_path / "empty").mkdir()
  one_line_error(DataError, folder_config(tmp_path / "empty"), "split 'train' not found")
  one_line_error(DataError, folder_config(tmp_path, num_classes=5), "3 class folders")


def test_decompression_bombs_are_data_errors(tmp_path, monkeypatch):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)   # 11 x 9 images exceed 2 x 40 pixels
  one_line_error(DataError, folder_config(tmp_path), "6 of 6 images cannot be read")
  one_line_error(DataError, folder_config(tmp_path, test_split="train"),
                 "cannot read image .*decompression bomb")


def test_unreadable_list_files(tmp_path, monkeypatch):
  write_image(tmp_path / "images" / "cat.png")
  (tmp_path / "train.txt").write_text("images/cat.png 0\n")
  (tmp_path / "test.txt").write_bytes(b"\xff\xfe\x00binary")
  one_line_error(DataError, folder_config(tmp_path), "test.txt is not UTF-8 text")
  (tmp_path / "test.txt").write_text("images/cat.png 0\n")

  def denied(path):
    raise PermissionError(13, "Permission denied", str(path))
  monkeypatch.setattr(folder, "_read_text", denied)
  one_line_error(DataError, folder_config(tmp_path), "cannot read .*train.txt: Permission denied")


# ----------------------------------------------------------------------------- shared checks


@pytest.mark.parametrize("field,value,match", [
    ("source", "tfrecord", "config.data.source='tfrecord' is not one of"),
    ("value_range", "0_1", "config.data.value_range='0_1' is not one of"),
    ("resize_method", "lanczos", "config.data.resize_method='lanczos' is not one of"),
    ("num_classes", -3, "num_classes=-3 must be an integer >= 0"),
])
def test_shared_config_checks(field, value, match):
  c = base_config().data
  c.update(source="synthetic", task="texture")
  c[field] = value
  with pytest.raises(ConfigError, match=match):
    check_config(c)
  one_line_error(ConfigError, c, match)


def test_bad_image_size_is_a_config_error():
  c = base_config().data
  c.update(source="synthetic", task="texture")
  one_line_error(ConfigError, c, "image size 0 must be a positive integer", image_size=0)


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("overrides,match", [
    ({"task": "nosuch"}, "'nosuch' is not a synthetic task"),
    ({"task": ""}, "'' is not a synthetic task"),
    ({"num_train": 0}, "num_val < num_train"),
    ({"num_train": -5}, "num_val < num_train"),
    ({"num_val": 1000}, "num_val < num_train"),
    ({"num_val": -1}, "0 <= num_val"),
    ({"num_test": 0}, "num_test > 0"),
    ({"synthetic_seed": -1}, "synthetic_seed=-1"),
    ({"train_split": "train"}, "train_split='train' is not valid"),
    ({"test_split": "validation"}, "test_split='validation' is not valid"),
    ({"num_classes": 5}, "num_classes=5 but synthetic task 'texture' has 12"),
    ({"task": "digits", "num_train": 1797}, "digits task has 1797 images"),
])
def test_synthetic_bad_sizes_and_names(overrides, match):
  c = base_config().data
  c.update(source="synthetic", task="texture", num_train=20, num_val=4, num_test=8)
  c.update(overrides)
  one_line_error(ConfigError, c, match)


def test_synthetic_bad_resize_method_fails_even_at_native_size():
  c = base_config().data
  c.update(source="synthetic", task="texture", num_train=20, num_val=4, num_test=8,
           resize_method="cubic")
  one_line_error(ConfigError, c, "resize_method='cubic'", image_size=32)   # texture is 32px


def test_folder_checks_create_nothing(tmp_path):
  make_split(tmp_path, "train")
  make_split(tmp_path, "test")
  (tmp_path / "test" / "cat" / "cat_1.png").write_bytes(b"bad")
  before = sorted(os.walk(tmp_path))
  with pytest.raises(DataError):
    build(folder_config(tmp_path))
  assert sorted(os.walk(tmp_path)) == before


def test_tfds_loader_wraps_odd_examples():
  from heat_jax.data.labels import plain_label
  from heat_jax.data.tfds_source import make_loader
  source = [{"image": np.zeros((2, 2, 2, 2), np.uint8), "label": 0},
            {"image": np.zeros((4, 4, 3), np.uint8), "level": 1}]
  load = make_loader(source, plain_label, image_size=4, resize_method="bicubic",
                     binary_image=False)
  with pytest.raises(DataError, match="example 0: cannot convert an image of shape"):
    load(0)
  with pytest.raises(DataError, match=r"example 1 has no field 'label' \(it has \['image', "
                     r"'level'\]\); check config.data.label_fn"):
    load(1)


@pytest.mark.parametrize("kwargs,match", [
    ({"tasks": "count,nosuch"}, "--tasks: 'nosuch' is not a synthetic task"),
    ({"tasks": ","}, "--tasks is empty"),
    ({"per_task": 0}, "--per_task=0 must be between 1 and 64"),
    ({"image_size": 4}, "--image_size=4 must be between 8 and 512"),
    ({"out": "grid.jpg"}, "must be a .png file name"),
    ({"out": "missing/grid.png"}, "folder .*missing does not exist"),
])
def test_example_grid_arguments(tmp_path, kwargs, match):
  from heat_jax.data import synthetic
  args = {"out": "grid.png", "tasks": "count", "per_task": 2, "image_size": 16, **kwargs}
  args["out"] = str(tmp_path / args["out"])
  with pytest.raises(ConfigError, match=match):
    synthetic.check_grid_args(**args)
  assert not any(tmp_path.iterdir())


def test_example_grid_cli_bad_input_is_one_line(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "heat_jax.data.synthetic", "--tasks=nosuch",
                         f"--out={tmp_path / 'g.png'}"], capture_output=True, text=True,
                        timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      proc.stderr.strip()] and proc.stderr.startswith("error: --tasks: 'nosuch'")
  assert not any(tmp_path.iterdir())
