"""`python -m heat_jax.predict`: top-k of a finished run on image files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RUN = ("--config=configs/smoke.py:method=lora", "--config.train.epochs=1",
       "--config.train.export_merged=True")   # shared with test_merged_export's lora run


def _predict(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "heat_jax.predict", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert proc.stdout == ""
  return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
  """Texture images at 48 px (resized to 32 by predict): RGB PNG, JPEG, grey, RGBA."""
  from heat_jax.data import synthetic
  folder = tmp_path_factory.mktemp("images")
  task = synthetic.make_task("texture", seed=9, image_size=48, value_range="minus1_1",
                             num_train=24, num_val=0, num_test=8)
  pics = task.test.images
  (folder / "sub").mkdir()
  for i in range(4):
    Image.fromarray(pics[i]).save(folder / f"rgb{i}.png")
  Image.fromarray(pics[4]).save(folder / "sub" / "photo.jpg", quality=95)
  Image.fromarray(pics[5]).convert("L").save(folder / "grey.png")
  Image.fromarray(pics[6]).convert("RGBA").save(folder / "alpha.png")
  (folder / ".hidden.png").write_bytes(b"never read: hidden")
  return folder


def _independent_logits(model, variables, paths: list[str]) -> np.ndarray:
  """What the smoke run's pipeline does to an image, written out with PIL and numpy."""
  batch = []
  for p in paths:
    with Image.open(p) as im:
      rgb = im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    batch.append((np.asarray(rgb, np.float32) - 127.5) / 127.5)   # minus1_1
  return np.asarray(model.apply(variables, np.stack(batch), train=False))


def test_predict_folder_matches_the_models_logits(cli_run, images, tmp_path):
  import heat_jax
  work, _ = cli_run(*RUN)
  out = tmp_path / "preds.json"
  proc = _predict(f"--workdir={work}", f"--folder={images}", "--top_k=3", f"--out={out}",
                  "--batch_size=4", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads(out.read_text())
  paths = [r["path"] for r in data["predictions"]]
  assert paths == sorted(str(p) for p in images.rglob("*") if p.suffix in (".png", ".jpg")
                         and not p.name.startswith("."))
  assert len(paths) == 7 and len(proc.stdout.splitlines()) == 7

  model, variables = heat_jax.load_adapter(str(work))
  logits = _independent_logits(model, variables, paths)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  names = json.loads((work / "results.json").read_text())["class_names"]
  for row, lg, pr in zip(data["predictions"], logits, probs):
    got = [t["index"] for t in row["top_k"]]
    assert got[0] == int(np.argmax(lg)), row["path"]
    assert got == list(np.argsort(-lg, kind="stable")[:3]), row["path"]
    np.testing.assert_allclose([t["prob"] for t in row["top_k"]], pr[got], atol=1e-5)
    assert [t["label"] for t in row["top_k"]] == [names[i] for i in got]
  # stdout: path, then the top-k names with probabilities
  first = proc.stdout.splitlines()[0].split("\t")
  assert first[0] == paths[0] and first[1].startswith(data["predictions"][0]["top_k"][0]["label"])


def test_unreadable_image_stops_or_is_skipped(cli_run, images, tmp_path):
  work, _ = cli_run(*RUN)
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  good = images / "rgb0.png"
  out = tmp_path / "preds.csv"
  line = _one_error_line(_predict(f"--workdir={work}", str(good), str(bad), f"--out={out}"))
  assert str(bad) in line and "--skip_unreadable" in line
  assert not out.exists()

  proc = _predict(f"--workdir={work}", str(good), str(bad), f"--out={out}",
                  "--skip_unreadable", "--top_k=2", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "skipping unreadable image" in proc.stderr and str(bad) in proc.stderr
  rows = list(csv.reader(out.open()))
  assert rows[0] == ["path", "top1_label", "top1_index", "top1_prob", "top2_label",
                     "top2_index", "top2_prob"]
  assert [r[0] for r in rows[1:]] == [str(good)]


def test_bad_workdirs_and_flags_are_one_line_errors(cli_run, images, tmp_path):
  work, _ = cli_run(*RUN)
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "no finished run" in _one_error_line(_predict(f"--workdir={empty}", f"--folder={images}"))
  assert "does not exist" in _one_error_line(
      _predict(f"--workdir={tmp_path / 'nope'}", f"--folder={images}"))
  assert "not found" in _one_error_line(_predict(f"--workdir={work}", str(tmp_path / "x.png")))
  assert "no images" in _one_error_line(_predict(f"--workdir={work}"))
  assert ".csv or .json" in _one_error_line(
      _predict(f"--workdir={work}", f"--folder={images}", "--out=p.txt"))
  assert "--top_k" in _one_error_line(_predict(f"--workdir={work}", f"--folder={images}",
                                               "--top_k=0"))


def test_help_lists_the_flags():
  proc = _predict("--help")
  assert proc.returncode == 0, proc.stderr
  for needle in ("python -m heat_jax.predict --workdir=", "--top_k", "--folder", "--out",
                 "--[no]skip_unreadable", "--[no]check_base"):
    assert needle in proc.stdout, needle
