"""Data sources end to end: TFDS (mock data, no TF), image folders, missing-data errors."""

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.vtab import get_config
from heat_jax.data import ArraySplit, build_task
from heat_jax.data.stream import StreamSplit
from heat_jax.errors import ConfigError, DataError
from heat_jax.models import model_info

tfds = pytest.importorskip("tensorflow_datasets")

SIZE = 24
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def mock(num_examples):
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def data_config(arg, tmp_path, **overrides):
  c = get_config(f"{arg},data_dir={tmp_path}").data
  for k, v in overrides.items():
    c[k] = v
  return c


def pil_resize(image, size=SIZE):
  """Independent reference: grayscale tiled to RGB, then PIL bicubic."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def row_keys(batches):
  rows = []
  for b in batches:
    for image, label, m in zip(b["image"], b["label"], b["mask"]):
      if m:
        rows.append(hashlib.sha1(image.tobytes() + bytes([int(label)])).hexdigest())
  return rows


# ----------------------------------------------------------------------------- tfds (mock)


@pytest.mark.parametrize("value_range", ["minus1_1", "unit", "imagenet"])
def test_tfds_dtd_end_to_end(tmp_path, value_range):
  n = 23
  c = data_config("dtd", tmp_path, value_range=value_range)
  with mock(n):
    task = build_task(c, image_size=SIZE)
    reference = tfds.data_source("dtd:3.*.*", split="test", data_dir=str(tmp_path),
                                 download=False)
    expected = np.stack([pil_resize(reference[i]["image"]) for i in range(n)])
    expected_labels = np.array([int(reference[i]["label"]) for i in range(n)])
    test_batches = list(task.test.batches(8, pad=True))
    shuffled = list(task.test.batches(8, pad=True, shuffle=True, seed=1))
    train_batches = list(task.train.batches(8, shuffle=True, seed=0, epoch=0,
                                            drop_remainder=True))

  assert task.num_classes == 47 and task.name == "dtd" and task.val is None
  assert isinstance(task.train, ArraySplit)
  assert task.train.images.dtype == np.uint8 and task.train.images.shape == (n, SIZE, SIZE, 3)
  assert isinstance(task.test, StreamSplit) and task.test.num_examples == n
  assert task.info["value_range"] == value_range and task.info["tfds_name"] == "dtd:3.*.*"

  # pad=True: every test example exactly once, in order, the rest is mask-0 padding
  assert len(test_batches) == 3
  for b in test_batches:
    assert b["image"].shape == (8, SIZE, SIZE, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in test_batches])
  assert mask.sum() == n and np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
  images = np.concatenate([b["image"] for b in test_batches])[:n]
  labels = np.concatenate([b["label"] for b in test_batches])[:n]
  np.testing.assert_array_equal(labels, expected_labels)
  x = expected.astype(np.float32)
  want = {"minus1_1": (x - 127.5) / 127.5, "unit": x / 255.0,
          "imagenet": (x / 255.0 - MEAN) / STD}[value_range]
  np.testing.assert_allclose(images, want, atol=1e-5)
  lo, hi = {"minus1_1": (-1, 1), "unit": (0, 1),
            "imagenet": ((0 - MEAN) / STD, (1 - MEAN) / STD)}[value_range]
  assert np.all(images >= np.min(lo) - 1e-6) and np.all(images <= np.max(hi) + 1e-6)
  # shuffling reorders but still yields each example once
  assert sorted(row_keys(shuffled)) == sorted(row_keys(test_batches))
  assert row_keys(shuffled) != row_keys(test_batches)
  # training: drop_remainder, n // 8 full batches
  assert [len(b["label"]) for b in train_batches] == [8, 8]
  assert all(np.all((b["label"] >= 0) & (b["label"] < 47)) for b in train_batches)


def test_tfds_swin_family_resolves_imagenet_range(tmp_path):
  with mock(5):
    task = build_task(data_config("svhn", tmp_path), image_size=SIZE,
                      auto_value_range=model_info("Swin-tiny").value_range)
    batch = next(task.test.batches(4))
  assert task.info["value_range"] == "imagenet"
  assert batch["image"].min() < -1.5   # imagenet-normalised black is about -2


def test_tfds_dsprites_binary_images_and_derived_labels(tmp_path):
  n = 9
  c = data_config("dsprites_loc", tmp_path, value_range="unit")
  with mock(n):
    task = build_task(c, image_size=64)
    reference = tfds.data_source("dsprites:2.*.*", split="train", data_dir=str(tmp_path),
                                 download=False)
    xs = [int(reference[i]["label_x_position"]) for i in range(n)]
    raw = [np.asarray(reference[i]["image"]) for i in range(n)]
    batch = next(task.test.batches(n))
  images = task.train.images
  assert images.shape == (n, 64, 64, 3)
  assert set(np.unique(images)) <= {0, 255}                 # {0, 1} -> {0, 255}
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grayscale tiled
  np.testing.assert_array_equal(images[..., 0], np.where(np.stack(raw)[..., 0] > 0, 255, 0))
  np.testing.assert_array_equal(task.train.labels, [x // 2 for x in xs])
  assert set(np.unique(batch["image"])) <= {0.0, 1.0}


def test_tfds_smallnorb_grayscale_tuned_with_val(tmp_path):
  c = data_config("smallnorb_ele,tune=True", tmp_path)
  with mock(6):
    task = build_task(c, image_size=SIZE)
    reference = tfds.data_source("smallnorb:2.*.*", split="test", data_dir=str(tmp_path),
                                 download=False)
    elevations = [int(reference[i]["label_elevation"]) for i in range(6)]
    test_labels = np.concatenate([b["label"] for b in task.test.batches(4)])
  assert task.val is not None and task.val.num_examples == 6
  assert task.train.images.shape == (6, SIZE, SIZE, 3)
  np.testing.assert_array_equal(task.train.images[..., 0], task.train.images[..., 1])
  np.testing.assert_array_equal(test_labels, elevations)
  assert task.num_classes == 9


def test_tfds_num_classes_mismatch_is_a_config_error(tmp_path):
  c = data_config("dtd", tmp_path, num_classes=10)
  with mock(3), pytest.raises(ConfigError, match="num_classes=10.*47"):
    build_task(c, image_size=SIZE)


def test_tfds_out_of_range_derived_labels_are_data_errors(tmp_path):
  # mock CLEVR scenes hold dozens of "objects": count - 3 exceeds the 8 classes
  c = data_config("clevr_count", tmp_path)
  with mock(3), pytest.raises(DataError, match=r"outside \[0, 8\)"):
    build_task(c, image_size=SIZE)


# ----------------------------------------------------------------------------- tfds (real files)

PIXEL_TO_INDEX = {(i * 40) % 256: i for i in range(20)}


class HeatJaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """A real array_record dataset, prepared without TF (PIL encodes the PNGs)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(20), "validation": self._generate_examples(7),
            "test": self._generate_examples(11)}

  def _generate_examples(self, n):
    for i in range(n):
      buf = io.BytesIO()
      Image.fromarray(np.full((5 + i % 4, 7, 3), (i * 40) % 256, np.uint8)).save(buf, "PNG")
      buf.seek(0)
      yield i, {"image": buf, "label": i % 3}


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  HeatJaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def tiny_config(data_dir, **overrides):
  c = get_config("dtd").data
  c.update(task="", tfds_name="heat_jax_tiny_images", data_dir=str(data_dir), num_classes=0,
           train_split="train[:5]+validation[:2]", val_split="validation[2:]", test_split="test")
  c.update(overrides)
  return c


def test_tfds_prepared_array_record_dataset(tiny_data_dir):
  task = build_task(tiny_config(tiny_data_dir), image_size=SIZE)
  assert task.num_classes == 3 and task.name == "heat_jax_tiny_images"
  assert (task.train.num_examples, task.val.num_examples, task.test.num_examples) == (7, 5, 11)
  # labels belong to their images (each image is one grey level that encodes its index)
  for image, label in zip(task.train.images, task.train.labels):
    assert np.all(image == image[0, 0, 0]) and label == PIXEL_TO_INDEX[image[0, 0, 0]] % 3
  batches = list(task.test.batches(4, pad=True))
  assert sum(b["mask"].sum() for b in batches) == 11 and len(batches) == 3
  pixels = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])[:11]
  levels = np.rint(pixels * 127.5 + 127.5).astype(int)
  assert sorted(PIXEL_TO_INDEX[v] for v in levels) == list(range(11))   # each exactly once
  labels = np.concatenate([b["label"] for b in batches])[:11]
  assert labels.tolist() == [PIXEL_TO_INDEX[v] % 3 for v in levels]


def test_tfds_prepared_dataset_bad_split_and_class_count(tiny_data_dir):
  with pytest.raises(DataError, match="cannot read split 'tset'") as info:
    build_task(tiny_config(tiny_data_dir, test_split="tset"), image_size=SIZE)
  assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="num_classes=5"):
    build_task(tiny_config(tiny_data_dir, num_classes=5), image_size=SIZE)


# ----------------------------------------------------------------------------- missing data


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
  start = time.time()
  with pytest.raises(DataError) as info:
    build_task(data_config("dtd", tmp_path), image_size=SIZE)
  assert time.time() - start < 10
  msg = str(info.value)
  assert "\n" not in msg
  assert "dtd" in msg and str(tmp_path) in msg and "config.data.data_dir" in msg
  assert 'pip install -e ".[tf]"' in msg and "python -m heat_jax.data.prepare dtd" in msg
  assert "source=folder" in msg
  assert not any(tmp_path.iterdir()) or not (tmp_path / "downloads").exists()


def test_missing_manual_dataset_explains_the_manual_download(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
  c = get_config("resisc45").data
  with pytest.raises(DataError) as info:
    build_task(c, image_size=SIZE)
  msg = str(info.value)
  assert str(tmp_path / "env_dir") in msg and "$TFDS_DATA_DIR" in msg
  assert "resisc45" in msg and "--manual_dir" in msg and "1drv.ms" in msg


def test_empty_splits_and_names_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="test_split"):
    build_task(data_config("dtd", tmp_path, test_split=""), image_size=SIZE)
  with pytest.raises(DataError, match="no dataset"):
    build_task(data_config("dtd", tmp_path, tfds_name="not_a_dataset"), image_size=SIZE)


def test_data_dir_resolution_and_prepare_targets(monkeypatch):
  from heat_jax.data.prepare import resolve_targets
  from heat_jax.data.tfds_source import resolve_data_dir
  monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/tfds")
  assert resolve_data_dir("") == ("gs://bucket/tfds", "$TFDS_DATA_DIR")
  assert resolve_data_dir("/local") == ("/local", "config.data.data_dir")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert resolve_data_dir("")[0].endswith("tensorflow_datasets")
  targets = resolve_targets(["all"])
  assert len(targets) == 16   # clevr, dsprites, smallnorb serve two tasks each
  assert ("clevr_count", "clevr:3.*.*") in targets and ("cifar100", "cifar100:3.*.*") in targets
  assert resolve_targets(["cifar", "mnist:3.*.*"]) == [("cifar100", "cifar100:3.*.*"),
                                                       ("mnist:3.*.*", "mnist:3.*.*")]


def test_prepare_without_tensorflow_exits_2(tmp_path):
  if __import__("importlib").util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed")
  proc = subprocess.run([sys.executable, "-m", "heat_jax.data.prepare", "dtd",
                         f"--data_dir={tmp_path / 'new'}"], capture_output=True, text=True,
                        timeout=60, cwd=Path(__file__).parents[1])
  assert proc.returncode == 2
  assert 'pip install -e ".[tf]"' in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "new").exists()   # the checks create nothing


# ----------------------------------------------------------------------------- folders

COLORS = {"banded": (200, 30, 30), "dotted": (30, 200, 30), "zigzag": (30, 30, 200)}


def write_image(path, color, size=(13, 9), mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new("RGB", size, color)
  (image.convert("L") if mode == "L" else image).save(path)


def make_folders(root, counts):
  for split, n in counts.items():
    for cls, color in COLORS.items():
      for i in range(n):
        write_image(root / split / cls / f"{cls}_{i}.png", color)


def label_of_color(image):
  """Class id from the mean colour of a uint8 image (sorted class names)."""
  names = sorted(COLORS)
  dist = [np.abs(image.reshape(-1, 3).mean(0) - COLORS[c]).sum() for c in names]
  return int(np.argmin(dist))


def folder_config(root, **overrides):
  c = get_config(f"dtd,source=folder,root={root}").data
  c.num_classes = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def test_folder_dataset_end_to_end(tmp_path):
  make_folders(tmp_path, {"train800val200": 4, "test": 3})
  write_image(tmp_path / "test" / "dotted" / "gray.jpg", (0, 0, 0), mode="L")
  task = build_task(folder_config(tmp_path), image_size=SIZE)
  assert task.num_classes == 3 and task.info["classes"] == sorted(COLORS)
  assert task.train.images.shape == (12, SIZE, SIZE, 3) and task.train.images.dtype == np.uint8
  assert [label_of_color(im) for im in task.train.images] == task.train.labels.tolist()
  batches = list(task.test.batches(4, pad=True))
  assert sum(b["mask"].sum() for b in batches) == 10 == task.test.num_examples
  assert all(b["image"].shape == (4, SIZE, SIZE, 3) for b in batches)
  images = np.concatenate([b["image"] for b in batches])[:10]
  labels = np.concatenate([b["label"] for b in batches])[:10]
  assert np.bincount(labels).tolist() == [3, 4, 3]
  gray = [im for im, lab in zip(images, labels) if lab == 1 and im.max() <= -0.99]
  assert len(gray) == 1   # the grayscale JPEG became 3 black channels


def test_folder_split_slicing_is_class_balanced(tmp_path):
  make_folders(tmp_path, {"train": 20, "test": 1})
  task = build_task(folder_config(tmp_path, train_split="train[:30]", test_split="test"),
                    image_size=8)
  counts = np.bincount(task.train.labels, minlength=3)
  assert task.train.num_examples == 30 and counts.min() >= 3   # not just the first class


def test_folder_list_files_noah_layout(tmp_path):
  for i, (cls, color) in enumerate(sorted(COLORS.items())):
    write_image(tmp_path / "images" / f"{cls}.jpg", color)
  lines = "\n".join(f"images/{cls}.jpg {i}" for i, cls in enumerate(sorted(COLORS)))
  (tmp_path / "train800val200.txt").write_text(lines + "\n")
  (tmp_path / "test.txt").write_text(lines.splitlines()[1] + "\n")
  task = build_task(folder_config(tmp_path, num_classes=3), image_size=SIZE)
  assert task.train.labels.tolist() == [0, 1, 2]
  assert [label_of_color(im) for im in task.train.images] == [0, 1, 2]
  assert next(task.test.batches(2, pad=True))["mask"].tolist() == [1.0, 0.0]


def test_folder_dtd_archive_layout(tmp_path):
  dtd = tmp_path / "dtd-r1.0.1" / "dtd"
  files = {s: [] for s in ("train1", "val1", "test1")}
  for cls, color in COLORS.items():
    for i in range(6):
      write_image(dtd / "images" / cls / f"{cls}_{i:04d}.jpg", color)
      files[("train1", "train1", "val1", "val1", "test1", "test1")[i]].append(
          f"{cls}/{cls}_{i:04d}.jpg")
  (dtd / "labels").mkdir()
  for split, names in files.items():
    (dtd / "labels" / f"{split}.txt").write_text("\n".join(names) + "\n")
  c = folder_config(tmp_path / "dtd-r1.0.1", num_classes=3)
  task = build_task(c, image_size=SIZE)   # train800val200 -> train1+val1
  assert task.train.num_examples == 12 and task.test.num_examples == 6
  assert [label_of_color(im) for im in task.train.images] == task.train.labels.tolist()
  c.train_split, c.val_split, c.test_split = "train800", "val200", "val200"
  task = build_task(c, image_size=SIZE)
  assert task.train.num_examples == 6 and task.val.num_examples == 6


def test_folder_errors(tmp_path):
  with pytest.raises(DataError, match="not a directory"):
    build_task(folder_config(tmp_path / "nope"), image_size=SIZE)
  make_folders(tmp_path, {"train800val200": 1})
  with pytest.raises(DataError, match="split 'test' not found") as info:
    build_task(folder_config(tmp_path), image_size=SIZE)
  assert "\n" not in str(info.value)
  make_folders(tmp_path, {"test": 1})
  for split in ("train800val200", "test"):
    (tmp_path / split / "empty_class").mkdir()
  with pytest.raises(DataError, match="empty_class has no"):
    build_task(folder_config(tmp_path), image_size=SIZE)
  for split in ("train800val200", "test"):
    os.rmdir(tmp_path / split / "empty_class")
  with pytest.raises(DataError, match="3 class folders .*num_classes=47"):
    build_task(folder_config(tmp_path, num_classes=47), image_size=SIZE)
  (tmp_path / "test" / "banded" / "banded_0.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match="1 of 3 images cannot be read, first .*banded_0.png"):
    build_task(folder_config(tmp_path), image_size=SIZE)   # at load
  with pytest.raises(ConfigError, match="folder_root"):
    build_task(folder_config(""), image_size=SIZE)


# ----------------------------------------------------------------------------- streaming


def test_stream_split_threads_match_serial_and_close_cleanly():
  rng = np.random.default_rng(0)
  data = rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 5, 37)
  load = lambda i: (data[i], int(labels[i]))
  norm = lambda x: np.asarray(x, np.float32)
  serial = StreamSplit("s", 37, load, norm, num_classes=5, workers=0)
  threaded = StreamSplit("t", 37, load, norm, num_classes=5, workers=3, prefetch=2)
  memory = ArraySplit("m", data, labels, norm)
  kw = dict(shuffle=True, seed=4, epoch=2, drop_remainder=False, pad=True)
  for a, b, c in zip(serial.batches(8, **kw), threaded.batches(8, **kw), memory.batches(8, **kw)):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[k], b[k])
      np.testing.assert_array_equal(a[k], c[k])
  gen = threaded.batches(4)
  next(gen)
  gen.close()   # stops the pool without hanging
  bad = StreamSplit("bad", 3, lambda i: (data[i], 9), norm, num_classes=5, workers=2)
  with pytest.raises(DataError, match="label 9"):
    list(bad.batches(2))
