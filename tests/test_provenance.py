"""Provenance: the registry's sha256 check of downloads (local HTTP server) and what
results.json records about the pretrained file and the input normalisation."""

import dataclasses
import functools
import hashlib
import http.server
import json
import threading

import pytest

from configs import smoke
from heat_jax import experiment
from heat_jax.checkpoints import get_checkpoint
from heat_jax.checkpoints.download import fetch_registered
from heat_jax.checkpoints.registry import CheckpointInfo
from heat_jax.errors import CheckpointError
from heat_jax.provenance import checkpoint_source, normalization
from heat_jax.testing import fake_checkpoints

MICRO = dict(hidden=32, layers=2, heads=2, mlp=64, patch=8, grid=4, num_classes=10)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  (root / "test").mkdir(parents=True)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv("HEAT_JAX_TEST_BUCKET_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("HEAT_JAX_OFFLINE", raising=False)
  yield root
  httpd.shutdown()
  httpd.server_close()


def _info(sha256):
  return CheckpointInfo("test/file", "vit", "test/file.npz", "HEAT_JAX_TEST_BUCKET_URL",
                        "http://127.0.0.1:9", "ViT-micro", sha256=sha256)


def test_a_download_with_the_registered_sha256_is_kept(bucket, tmp_path):
  data = b"weights" * 1000
  (bucket / "test" / "file.npz").write_bytes(data)
  path = fetch_registered(_info(hashlib.sha256(data).hexdigest()))
  assert path.read_bytes() == data
  assert fetch_registered(_info(hashlib.sha256(data).hexdigest())) == path   # cached, checked


def test_a_download_with_another_sha256_is_refused_and_never_cached(bucket, tmp_path):
  (bucket / "test" / "file.npz").write_bytes(b"tampered")
  with pytest.raises(CheckpointError, match=r"has sha256 [0-9a-f]{64}, not the registered "
                                            r"0{64}: refusing it") as e:
    fetch_registered(_info("0" * 64))
  assert "\n" not in str(e.value)
  cache = tmp_path / "cache" / "checkpoints"
  assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_a_cached_file_with_another_sha256_is_refused(bucket, tmp_path):
  dest = tmp_path / "cache" / "checkpoints" / "test" / "file.npz"
  dest.parent.mkdir(parents=True)
  dest.write_bytes(b"swapped on disk")
  with pytest.raises(CheckpointError, match="delete it and rerun"):
    fetch_registered(_info("1" * 64))
  assert fetch_registered(_info("")) == dest      # unknown sha256: nothing to check


def test_the_public_registry_claims_no_sha256_it_cannot_source():
  # No public source states the sha256 of the vit_models bucket files (README
  # "Provenance"): the registry must say unknown rather than invent one.
  for name in ("ViT-B_16", "augreg/B_16"):
    assert get_checkpoint(name).sha256 == ""
    assert checkpoint_source(name)["published_sha256"] == "unknown"
  src = checkpoint_source("augreg/B_16", "/cache/x.npz")
  assert src["url"].endswith("augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-"
                             "sd_0.0.npz") and src["name"] == "augreg/B_16"
  assert checkpoint_source("https://h/x.npz", "/c/x.npz")["url"] == "https://h/x.npz"


def test_normalization_values():
  assert normalization("minus1_1") == {"value_range": "minus1_1", "mean": [0.5] * 3,
                                       "std": [0.5] * 3}
  assert normalization("imagenet")["mean"] == [0.485, 0.456, 0.406]
  assert normalization("unit")["std"] == [1.0] * 3


def test_results_json_records_the_file_its_sha256_source_and_normalisation(tmp_path):
  ckpt = tmp_path / "base.npz"
  fake_checkpoints.write_vit_npz(ckpt, seed=3, **MICRO)
  c = smoke.get_config("method=linear")
  c.model.pretrained = str(ckpt)
  c.train.epochs = 1
  c.train.progress = False
  experiment.run(c, str(tmp_path / "run"), quiet=True)
  r = json.loads((tmp_path / "run" / "results.json").read_text())
  want = hashlib.sha256(ckpt.read_bytes()).hexdigest()
  assert r["checkpoint"]["sha256"] == want and r["checkpoint"]["file"] == "base.npz"
  assert r["checkpoint"]["source"] == {"name": None, "url": None, "path": str(ckpt),
                                       "published_sha256": "unknown"}
  assert r["normalization"] == normalization("minus1_1")   # ViT default value range
