"""ViT checkpoint loading: dialects, prefixes, head, posemb resize, errors, download."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import traverse_util

from heat_jax.checkpoints import (get_checkpoint, init_params, load_pretrained,
                                  resolve_checkpoint)
from heat_jax.errors import CheckpointError, DownloadError
from heat_jax.io_utils import load_npz, write_npz
from heat_jax.models import create_model
from heat_jax.testing.fake_checkpoints import vit_arrays

# ViT-micro: patch 8, width 32, 2 layers, 2 heads, MLP 64, 32 px images (grid 4).
MICRO = dict(hidden=32, layers=2, heads=2, mlp=64, patch=8, grid=4, num_classes=5)
POSEMB = "Transformer/posembed_input/pos_embedding"
# Block children: pre-Linen (vit_jax on disk) -> Linen (in memory), from the vit_jax docs.
PRE_LINEN = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1":
             "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
             "MlpBlock_3": "MlpBlock_0"}


def _flat(params) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params), sep="/").items()}


def _write(tmp_path: Path, name: str = "ckpt.npz", **kwargs) -> tuple[Path, dict]:
  arrays = vit_arrays(**{**MICRO, **kwargs})
  path = tmp_path / name
  write_npz(path, arrays)
  return path, arrays


def _expected_from_vit_jax(arrays: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """The in-memory names of a vit_jax file, written out independently of the loader."""
  out = {}
  for key, value in arrays.items():
    key = key[len(prefix):]
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = PRE_LINEN[parts[2]]
    out["/".join(parts)] = value
  return out


def _expected_from_big_vision(arrays: dict, prefix: str, layers: int,
                              token: bool) -> dict[str, np.ndarray]:
  out = {}
  for key, value in arrays.items():
    key = key[len(prefix):]
    if key.startswith("Transformer/encoderblock/"):
      for i in range(layers):
        out[key.replace("encoderblock/", f"encoderblock_{i}/")] = value[i]
    elif key == "pos_embedding":
      # No posemb for the class token in big_vision: a zero slot is exact.
      slot = [np.zeros_like(value[:, :1])] if token else []
      out[POSEMB] = np.concatenate(slot + [value], axis=1)
    else:
      out[key] = value
  return out


def _assert_loaded(params, expected: dict, fresh_head: dict) -> None:
  flat = _flat(params)
  body = {k for k in flat if not k.startswith("head/")}
  want = {k for k in expected if not k.startswith(("head/", "pre_logits/"))}
  assert body == want
  for key in body:
    np.testing.assert_array_equal(flat[key], expected[key], err_msg=key)
  for key in ("head/kernel", "head/bias"):
    np.testing.assert_array_equal(flat[key], fresh_head[key], err_msg=key)


@pytest.fixture(scope="module")
def micro():
  """ViT-micro with a random head init, and its fresh head for rng key 3."""
  model = create_model("ViT-micro", 5, head_init="lecun")
  fresh = _flat(init_params(model, rng=jax.random.key(3)))
  return model, {k: fresh[k] for k in ("head/kernel", "head/bias")}


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_vit_jax_dialect(tmp_path, micro, prefix):
  model, fresh_head = micro
  path, arrays = _write(tmp_path, prefix=prefix, seed=1)
  params = load_pretrained(path, model, rng=jax.random.key(3))
  _assert_loaded(params, _expected_from_vit_jax(arrays, prefix), fresh_head)
  # The file's head (same class count) is never reused.
  assert not np.allclose(_flat(params)["head/kernel"], arrays[f"{prefix}head/kernel"])


@pytest.mark.parametrize("scanned", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("prefix", ["", "params/", "params/img/"])
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_big_vision_dialect(tmp_path, prefix, scanned, classifier):
  model = create_model("ViT-micro", 5, classifier=classifier)
  path, arrays = _write(tmp_path, dialect="big_vision", prefix=prefix, scanned=scanned,
                        classifier=classifier, seed=2)
  params = load_pretrained(path, model)
  expected = _expected_from_big_vision(arrays, prefix, MICRO["layers"], classifier == "token")
  zero_head = {"head/kernel": np.zeros((32, 5), np.float32),
               "head/bias": np.zeros((5,), np.float32)}
  _assert_loaded(params, expected, zero_head)
  assert ("cls" in params) == (classifier == "token")


def test_big_vision_posemb_is_added_before_the_class_token(tmp_path):
  """A vit_jax file converted as big_vision does (row 0 into cls) gives the same model."""
  model = create_model("ViT-micro", 5, head_init="lecun")
  path, arrays = _write(tmp_path, seed=3)
  bv = {}
  for key, value in arrays.items():
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = PRE_LINEN[parts[2]]
    bv["params/" + "/".join(parts)] = value
  pos = bv.pop("params/" + POSEMB)
  bv["params/pos_embedding"] = pos[:, 1:]
  bv["params/cls"] = arrays["cls"] + pos[:, :1]
  bv_path = tmp_path / "bv.npz"
  write_npz(bv_path, bv)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(lambda p: model.apply({"params": p}, x, return_block_tokens=True)[1][-1])
  a = apply(load_pretrained(path, model))
  b = apply(load_pretrained(bv_path, model))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_linen_named_vit_jax_file_keeps_class_slot(tmp_path, micro):
  """vit_jax files saved with Linen names (fine-tuned checkpoints) load too."""
  model, fresh_head = micro
  _, arrays = _write(tmp_path, seed=4)
  linen = _expected_from_vit_jax(arrays)
  path = tmp_path / "linen.npz"
  write_npz(path, linen)
  params = load_pretrained(path, model, rng=jax.random.key(3))
  _assert_loaded(params, linen, fresh_head)


def test_pre_logits_dropped_or_kept(tmp_path, micro):
  model, fresh_head = micro
  path, arrays = _write(tmp_path, representation_size=32, seed=5)
  params = load_pretrained(path, model, rng=jax.random.key(3))
  assert "pre_logits" not in params
  _assert_loaded(params, _expected_from_vit_jax(arrays), fresh_head)
  with_rep = create_model("ViT-micro", 5, representation_size=32)
  params = load_pretrained(path, with_rep)
  np.testing.assert_array_equal(params["pre_logits"]["kernel"], arrays["pre_logits/kernel"])
  np.testing.assert_array_equal(params["pre_logits"]["bias"], arrays["pre_logits/bias"])
  # A model that needs pre_logits cannot load a file without it.
  plain_path, _ = _write(tmp_path, name="plain.npz", seed=5)
  with pytest.raises(CheckpointError, match="pre_logits/kernel"):
    load_pretrained(plain_path, with_rep)


def test_head_reinitialised_for_new_class_count(tmp_path, micro):
  model, fresh_head = micro  # 5 classes, fresh head for rng key 3
  path, arrays = _write(tmp_path, num_classes=21, seed=6)
  params = load_pretrained(path, model, rng=jax.random.key(3))
  assert params["head"]["kernel"].shape == (32, 5)
  np.testing.assert_array_equal(params["head"]["kernel"], fresh_head["head/kernel"])
  np.testing.assert_array_equal(params["head"]["bias"], fresh_head["head/bias"])
  assert np.abs(params["head"]["kernel"]).max() > 0
  other = load_pretrained(path, model, rng=jax.random.key(10))
  assert not np.allclose(other["head"]["kernel"], params["head"]["kernel"])
  zeros = load_pretrained(path, create_model("ViT-micro", 7))  # vit_jax default: zeros
  assert zeros["head"]["kernel"].shape == (32, 7)
  assert not np.any(zeros["head"]["kernel"]) and not np.any(zeros["head"]["bias"])


def test_fresh_parameters_equal_init_params(tmp_path):
  """Head and PETL extensions come out exactly as `init_params` makes them."""
  from heat_jax.methods.adapter import AdapterSpec
  from heat_jax.methods.lora import LoraSpec
  from heat_jax.methods.vpt import VptSpec
  model = create_model("ViT-micro", 4, head_init="lecun", extensions=(
      LoraSpec(rank=2), AdapterSpec(dim=3), VptSpec(num_tokens=2)))
  path, arrays = _write(tmp_path, seed=14)
  params = _flat(load_pretrained(path, model, rng=jax.random.key(5)))
  fresh = _flat(init_params(model, rng=jax.random.key(5)))
  assert set(params) == set(fresh)
  new = [k for k in fresh if k.startswith("head/") or any(
      n in k for n in ("lora_", "adapter", "vpt_prompts"))]
  assert len(new) == 2 + 2 * 2 * 2 + 2 * 4 + 1
  for key in new:
    np.testing.assert_array_equal(params[key], fresh[key], err_msg=key)
  expected = _expected_from_vit_jax(arrays)
  for key in set(params) - set(new):
    np.testing.assert_array_equal(params[key], expected[key], err_msg=key)


def _zoom_posemb(posemb: np.ndarray, slot: bool, new_hw: tuple[int, int]) -> np.ndarray:
  """vit_jax / big_vision resize, computed here with scipy directly."""
  cls_row = posemb[:, :1] if slot else np.zeros_like(posemb[:, :1])
  grid = posemb[0, 1:] if slot else posemb[0]
  gs = int(np.sqrt(grid.shape[0]))
  grid = grid.reshape(gs, gs, -1)
  zoomed = scipy.ndimage.zoom(grid, (new_hw[0] / gs, new_hw[1] / gs, 1), order=1)
  return np.concatenate([cls_row, zoomed.reshape(1, -1, grid.shape[-1])], axis=1)


@pytest.mark.parametrize("image_size", [48, (48, 64), 24])
def test_posemb_resize_zoom(tmp_path, micro, image_size):
  model, _ = micro
  path, arrays = _write(tmp_path, seed=7)
  params = load_pretrained(path, model, image_size=image_size, rng=jax.random.key(3))
  hw = (image_size, image_size) if isinstance(image_size, int) else image_size
  new_grid = (hw[0] // 8, hw[1] // 8)
  expected = _zoom_posemb(arrays[POSEMB], True, new_grid)
  got = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  assert got.shape == (1, 1 + new_grid[0] * new_grid[1], 32)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(got[:, 0], arrays[POSEMB][:, 0])  # class slot untouched
  # Everything else is loaded unchanged.
  np.testing.assert_array_equal(params["embedding"]["kernel"], arrays["embedding/kernel"])


def test_posemb_resize_zoom_big_vision(tmp_path):
  model = create_model("ViT-micro", 5)
  path, arrays = _write(tmp_path, dialect="big_vision", prefix="params/", seed=8)
  params = load_pretrained(path, model, image_size=56)
  got = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  expected = _zoom_posemb(arrays["params/pos_embedding"], False, (7, 7))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("file_grid,image_size", [(4, 48), (6, 32), (4, (40, 56))])
def test_posemb_resize_bilinear_half_pixel(tmp_path, micro, file_grid, image_size):
  """interpolation='bilinear' (timm) = half-pixel bilinear = jax.image.resize linear."""
  model, _ = micro
  path, arrays = _write(tmp_path, grid=file_grid, seed=9)
  params = load_pretrained(path, model, image_size=image_size, interpolation="bilinear")
  hw = (image_size, image_size) if isinstance(image_size, int) else image_size
  new_grid = (hw[0] // 8, hw[1] // 8)
  grid = arrays[POSEMB][0, 1:].reshape(file_grid, file_grid, -1)
  resized = jax.image.resize(jnp.asarray(grid, jnp.float32), (*new_grid, grid.shape[-1]),
                             method="linear", antialias=False)
  got = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
  np.testing.assert_allclose(got[0, 1:], np.asarray(resized).reshape(-1, grid.shape[-1]),
                             rtol=0, atol=1e-6)
  zoom = _zoom_posemb(arrays[POSEMB], True, new_grid)
  assert np.abs(zoom - got).max() > 1e-4  # the two methods really differ


def test_mismatch_error_lists_everything_at_once(tmp_path, micro):
  model, _ = micro
  arrays = vit_arrays(**MICRO, seed=10)
  del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
  arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/extra/kernel"] = (
      np.zeros((3,), np.float32))
  arrays["Transformer/encoder_norm/scale"] = np.ones((31,), np.float32)
  path = tmp_path / "bad.npz"
  write_npz(path, arrays)
  with pytest.raises(CheckpointError) as info:
    load_pretrained(path, model)
  message = str(info.value)
  assert "1 missing: Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias" in message
  assert ("1 unexpected: Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
          "extra/kernel") in message
  assert "1 wrong shape: Transformer/encoder_norm/scale file (31,) vs model (32,)" in message


def test_wrong_model_for_file_reports_missing_blocks(tmp_path):
  path, _ = _write(tmp_path, seed=11)
  deeper = create_model("ViT-micro", 5, num_layers=3)
  with pytest.raises(CheckpointError, match=r"missing: Transformer/encoderblock_2/"):
    load_pretrained(path, deeper)


def test_not_a_vit_file_or_map_head(tmp_path, micro):
  model, _ = micro
  write_npz(tmp_path / "other.npz", {"weights": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match="embedding/kernel"):
    load_pretrained(tmp_path / "other.npz", model)
  arrays = vit_arrays(**MICRO, dialect="big_vision", classifier="gap", prefix="params/")
  arrays["params/MAPHead_0/probe"] = np.zeros((1, 1, 32), np.float32)
  write_npz(tmp_path / "map.npz", arrays)
  with pytest.raises(CheckpointError, match="MAP"):
    load_pretrained(tmp_path / "map.npz", model)
  (tmp_path / "w.safetensors").write_bytes(b"0")   # a ViT reads timm / HF files too
  with pytest.raises(CheckpointError, match="as .safetensors.*partial download"):
    load_pretrained(tmp_path / "w.safetensors", model)
  (tmp_path / "w.ckpt").write_bytes(b"0")
  with pytest.raises(CheckpointError, match=r"\.npz.*\.safetensors"):
    load_pretrained(tmp_path / "w.ckpt", model)


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "garbage", "empty"])
def test_corrupt_or_partial_npz(tmp_path, micro, damage):
  model, _ = micro
  path, _ = _write(tmp_path, seed=12)
  data = path.read_bytes()
  if damage == "truncated":
    data = data[: len(data) // 2]
  elif damage == "flipped_byte":
    data = data[:3000] + bytes([data[3000] ^ 0xFF]) + data[3001:]
  elif damage == "garbage":
    data = b"<html>not found</html>"
  else:
    data = b""
  path.write_bytes(data)
  with pytest.raises(CheckpointError, match="partial download"):
    load_pretrained(path, model)


def test_pickled_npz_is_refused(tmp_path, micro):
  model, _ = micro
  path = tmp_path / "pickled.npz"
  arrays = vit_arrays(**MICRO)
  arrays["cls"] = np.array([{"not": "an array"}], dtype=object)
  np.savez(path, **arrays)  # object arrays are stored pickled
  with pytest.raises(CheckpointError, match="pickle"):
    load_pretrained(path, model)


# ----------------------------------------------------------------------------------------
# Registry and download.

BUCKET = "https://storage.googleapis.com/vit_models"


@pytest.mark.parametrize("name,url", [
    ("ViT-B_16", f"{BUCKET}/imagenet21k/ViT-B_16.npz"),
    ("imagenet21k/ViT-B_16", f"{BUCKET}/imagenet21k/ViT-B_16.npz"),
    ("ViT-L_32", f"{BUCKET}/imagenet21k/ViT-L_32.npz"),
    ("ViT-H_14", f"{BUCKET}/imagenet21k/ViT-H_14.npz"),
    ("augreg/B_16", f"{BUCKET}/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-"
                    "sd_0.0.npz"),
    ("howto-i21k-B/16", f"{BUCKET}/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-"
                        "do_0.0-sd_0.0.npz"),
    ("augreg/Ti_16", f"{BUCKET}/augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-"
                     "sd_0.0.npz"),
])
def test_registry_urls(monkeypatch, name, url):
  monkeypatch.delenv("HEAT_JAX_VIT_MODELS_URL", raising=False)
  info = get_checkpoint(name)
  assert info is not None and info.url == url
  assert info.family == "vit"
  create_model(info.model, 3)  # names a registered model configuration
  monkeypatch.setenv("HEAT_JAX_VIT_MODELS_URL", "http://mirror.example/vit/")
  assert get_checkpoint(name).url == "http://mirror.example/vit" + url[len(BUCKET):]


def test_unknown_names_and_missing_files(tmp_path):
  with pytest.raises(CheckpointError, match="unknown checkpoint 'ViT-Q_16'.*ViT-B_16"):
    resolve_checkpoint("ViT-Q_16")
  with pytest.raises(CheckpointError, match="not found"):
    resolve_checkpoint(str(tmp_path / "missing.npz"))
  with pytest.raises(CheckpointError, match="no checkpoint given"):
    resolve_checkpoint("")


class _Server:
  """A local HTTP server over a directory that counts GET requests."""

  def __init__(self, root: Path):
    self.requests: list[str] = []
    requests = self.requests

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        requests.append(self.path)
        if self.path.startswith("/short/"):  # promises more bytes than it sends
          self.send_response(200)
          self.send_header("Content-Length", "100000")
          self.end_headers()
          self.wfile.write(b"PK" + b"\0" * 998)
          self.close_connection = True
          return
        super().do_GET()

      def log_message(self, *args):
        pass

    handler = functools.partial(Handler, directory=str(root))
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(5)


@pytest.fixture
def server(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  (root / "imagenet21k").mkdir(parents=True)
  srv = _Server(root)
  monkeypatch.setenv("HEAT_JAX_VIT_MODELS_URL", srv.url)
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_DOWNLOAD_TIMEOUT", "10")
  monkeypatch.delenv("HEAT_JAX_OFFLINE", raising=False)
  yield srv, root
  srv.close()


def test_download_into_cache_once(tmp_path, server, micro):
  srv, root = server
  model, fresh_head = micro
  arrays = vit_arrays(**MICRO, seed=13)
  write_npz(root / "imagenet21k" / "ViT-B_16.npz", arrays)
  dest = tmp_path / "cache" / "checkpoints" / "imagenet21k" / "ViT-B_16.npz"

  path = resolve_checkpoint("ViT-B_16")
  assert path == dest
  assert srv.requests == ["/imagenet21k/ViT-B_16.npz"]
  assert path.read_bytes() == (root / "imagenet21k" / "ViT-B_16.npz").read_bytes()
  assert os.listdir(dest.parent) == ["ViT-B_16.npz"]  # no temporary file left behind

  assert resolve_checkpoint("imagenet21k/ViT-B_16") == dest  # reused: no new request
  params = load_pretrained("ViT-B_16", model, rng=jax.random.key(3))
  assert len(srv.requests) == 1
  _assert_loaded(params, _expected_from_vit_jax(arrays), fresh_head)

  by_url = resolve_checkpoint(f"{srv.url}/imagenet21k/ViT-B_16.npz")
  assert by_url == tmp_path / "cache" / "checkpoints" / "urls" / "ViT-B_16.npz"
  assert by_url.read_bytes() == dest.read_bytes()
  assert len(srv.requests) == 2


def test_interrupted_download_leaves_nothing(tmp_path, server):
  srv, _ = server
  url = f"{srv.url}/short/ViT-B_16.npz"
  with pytest.raises(DownloadError, match=r"stopped after 1000 of 100000 bytes"):
    resolve_checkpoint(url)
  urls = tmp_path / "cache" / "checkpoints" / "urls"
  assert not urls.exists() or os.listdir(urls) == []


def test_http_error_is_download_error(tmp_path, server):
  with pytest.raises(DownloadError, match=r"HTTP 404.*imagenet21k/ViT-L_16.npz"):
    resolve_checkpoint("ViT-L_16")
  assert not (tmp_path / "cache" / "checkpoints" / "imagenet21k" / "ViT-L_16.npz").exists()


def test_unreachable_server_is_download_error(tmp_path, monkeypatch):
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv("HEAT_JAX_VIT_MODELS_URL", f"http://127.0.0.1:{port}/vit_models")
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_DOWNLOAD_TIMEOUT", "5")
  monkeypatch.delenv("HEAT_JAX_OFFLINE", raising=False)
  with pytest.raises(DownloadError) as info:
    resolve_checkpoint("ViT-B_16")
  message = str(info.value)
  assert f"http://127.0.0.1:{port}/vit_models/imagenet21k/ViT-B_16.npz" in message
  assert "offline" in message and "put it at" in message
  assert not list((tmp_path / "cache").rglob("*.npz*"))


def test_offline_mode_refuses_to_download(tmp_path, monkeypatch):
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_OFFLINE", "1")
  with pytest.raises(DownloadError, match="HEAT_JAX_OFFLINE"):
    resolve_checkpoint("ViT-B_16")
  cached = tmp_path / "cache" / "checkpoints" / "imagenet21k" / "ViT-B_16.npz"
  write_npz(cached, {"x": np.zeros(1, np.float32)})
  assert resolve_checkpoint("ViT-B_16") == cached  # a cached file needs no network
  assert load_npz(cached)["x"].shape == (1,)
