"""Hostile or broken user files, read by the one image decoder and the file loaders.

Images are crafted by the test (PIL, or raw PNG bytes for a header that claims a huge
size); expected pixels come from how the file was built, not from the decoder.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heat_jax.data import folder, image_io
from heat_jax.errors import CheckpointError, DataError


def png_claiming(path: Path, width: int, height: int) -> Path:
  """A PNG whose header claims width x height pixels but holds almost no data."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                   + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
  return path


def test_decompression_bomb_is_one_line_before_decoding(tmp_path):
  bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
  with pytest.raises(DataError) as e:
    image_io.read_rgb(str(bomb))
  assert "bomb.png" in str(e.value) and "decompression bomb" in str(e.value)
  assert "more pixels than the limit" in image_io.check_readable(str(bomb))
  # between PIL's warning and error thresholds PIL only warns: refused all the same
  mid = png_claiming(tmp_path / "mid.png", 12_000, 10_000)
  assert "more pixels than the limit" in image_io.check_readable(str(mid))


def test_truncated_image_is_named(tmp_path):
  path = tmp_path / "t.jpg"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
  path.write_bytes(path.read_bytes()[:400])
  with pytest.raises(DataError, match=r"(?i)cannot read image .*t\.jpg: .*truncated"):
    image_io.read_rgb(str(path))
  assert image_io.check_readable(str(path))


def test_modes_become_rgb(tmp_path):
  gray = tmp_path / "gray.png"
  Image.new("L", (3, 2), 77).save(gray)
  assert image_io.read_rgb(str(gray)).tolist() == [[[77] * 3] * 3] * 2

  cmyk = tmp_path / "cmyk.jpg"
  Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, quality=100)   # pure red ink
  r, g, b = image_io.read_rgb(str(cmyk)).reshape(-1, 3).mean(0)
  assert r > 240 and g < 15 and b < 15

  pal = tmp_path / "pal.png"
  p = Image.new("P", (2, 1))
  p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
  p.putpixel((1, 0), 1)
  p.info["transparency"] = 0
  p.save(pal, transparency=0)
  assert image_io.read_rgb(str(pal)).tolist() == [[[10, 20, 30], [200, 100, 50]]]

  rgba = tmp_path / "rgba.png"
  Image.new("RGBA", (1, 1), (1, 2, 3, 0)).save(rgba)
  assert image_io.read_rgb(str(rgba)).tolist() == [[[1, 2, 3]]]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
  path = tmp_path / "deep.png"
  values = np.array([[0, 257, 32768, 65535]], np.uint16)
  Image.fromarray(values).save(path)   # a 16-bit grayscale PNG
  got = image_io.read_rgb(str(path))
  assert got.dtype == np.uint8 and got.shape == (1, 4, 3)
  assert got[..., 0].tolist() == [[0, 1, 128, 255]]   # v >> 8; clipping gives 255 thrice


def test_exif_orientation_is_applied(tmp_path):
  path = tmp_path / "phone.jpg"
  stored = np.zeros((16, 32, 3), np.uint8)   # 32 wide, 16 high; red block top-left
  stored[:8, :8] = (255, 0, 0)
  im = Image.fromarray(stored)
  exif = im.getexif()
  exif[0x0112] = 6   # orientation: rotate 90 degrees clockwise to display
  im.save(path, exif=exif, quality=100)
  got = image_io.read_rgb(str(path))
  assert got.shape == (32, 16, 3)            # shown upright: 16 wide, 32 high
  assert got[:8, -8:, 0].mean() > 200 and got[-8:, :8, 0].mean() < 50   # now top-right


def test_symlink_loops_in_image_folders_end(tmp_path):
  root = tmp_path / "data"
  (root / "train" / "cat").mkdir(parents=True)
  (root / "test" / "cat").mkdir(parents=True)
  for split in ("train", "test"):
    Image.new("RGB", (4, 4)).save(root / split / "cat" / "a.png")
  os.symlink(root, root / "train" / "cat" / "loop")           # a folder loop
  os.symlink("self.png", root / "train" / "cat" / "self.png")  # a file loop
  assert folder.image_files(root) == [str(root / s / "cat" / "a.png")
                                      for s in ("test", "train")]
  entries = folder.FolderDataset(str(root), ["train"]).split("train")
  assert entries == [(str(root / "train" / "cat" / "a.png"), 0)]
  assert "symbolic links" in image_io.check_readable(str(root / "train" / "cat" / "self.png"))


def test_folder_loader_and_predict_share_the_decoder(tmp_path, monkeypatch):
  """Both the dataset loader and predict's unreadable-check go through image_io."""
  from heat_jax import predict
  calls = []
  monkeypatch.setattr(image_io, "read_rgb", lambda p: calls.append(("read", p)) or
                      np.zeros((4, 4, 3), np.uint8))
  monkeypatch.setattr(image_io, "check_readable", lambda p: calls.append(("check", p)))
  folder.make_loader([("x.png", 0)], image_size=4, resize_method="bilinear")(0)
  predict.readable(["y.png"], skip=False)
  assert calls == [("read", "x.png"), ("check", "y.png")]


# ----------------------------------------------------------------------------- weights


def npz_claiming(path: Path, shape: tuple) -> Path:
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                "shape": shape})
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("embedding/kernel.npy", header.getvalue() + b"\0" * 64)
  return path


def test_npz_header_claiming_terabytes_is_refused_without_allocating(tmp_path):
  from heat_jax.io_utils import load_npz
  with pytest.raises(ValueError, match=r"claims shape \(1000000000000,\) \(4.0 TB\) but "
                     "holds 64 B"):
    load_npz(npz_claiming(tmp_path / "x.npz", (10 ** 12,)))


def test_safetensors_with_absurd_header_is_a_checkpoint_error(tmp_path):
  from heat_jax.checkpoints import swin_timm
  path = tmp_path / "x.safetensors"
  path.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
  with pytest.raises(CheckpointError, match="x.safetensors"):
    swin_timm.load_state_dict(path)
  header = json.dumps({"w": {"dtype": "F32", "shape": [10 ** 12],
                             "data_offsets": [0, 4 * 10 ** 12]}}).encode()
  path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
  with pytest.raises(CheckpointError, match="x.safetensors"):
    swin_timm.load_state_dict(path)


@pytest.mark.parametrize("name,needle", [
    ("https://example.invalid/ViT-B_16.npz", "by URL"),
    ("gs://bucket/ViT-B_16.npz", "by URL"),
    ("../../../../etc/ViT-B_16.npz", "climbs out"),
    ("/dev/zero", "not a regular file"),
])
def test_recorded_base_is_never_fetched_or_opened_unasked(name, needle):
  from heat_jax.artifacts import recorded_base
  with pytest.raises(CheckpointError, match=needle):
    recorded_base(name, "adapter_config.json")
  assert recorded_base(None, "x") is None
  assert recorded_base("ViT-B/16", "x") == "ViT-B/16"     # a registered name
