"""Checkpoints on the Hugging Face Hub: hf_hub_download against a local fake Hub.

The server on 127.0.0.1 answers in the Hub's URL layout
(`/{repo}/resolve/{revision}/{filename}`) with the headers huggingface_hub needs
(`X-Repo-Commit`, `ETag`, `Content-Length`); `HF_ENDPOINT` points at it.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import types

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from heat_jax.checkpoints import resolve_checkpoint
from heat_jax.checkpoints.download import fetch_registered
from heat_jax.checkpoints.registry import CheckpointInfo, get_checkpoint
from heat_jax.checkpoints.swin_timm import load_state_dict
from heat_jax.errors import DownloadError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/swin-test"
INFO = CheckpointInfo(name="acme/swin-test", family="swin", path="swin/acme/model.safetensors",
                      base_env="HEAT_JAX_TEST_HUB_MIRROR", default_base="http://unused.invalid",
                      model="Swin-tiny", hf_repo=REPO, hf_filename="model.safetensors")
ARRAYS = {"patch_embed.proj.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
          "head.fc.bias": np.linspace(-1, 1, 5).astype(np.float32)}


class FakeHub:
  """Serves {(repo, filename): bytes} at /{repo}/resolve/main/{filename}; logs requests."""

  def __init__(self, files: dict[tuple[str, str], bytes]):
    self.requests: list[tuple[str, str]] = []
    log, hub_files = self.requests, files

    class Handler(http.server.BaseHTTPRequestHandler):
      def _answer(self, body: bool) -> None:
        log.append((self.command, self.path))
        repo, sep, rest = self.path.lstrip("/").partition("/resolve/main/")
        data = hub_files.get((repo, rest)) if sep else None
        if data is None:
          self.send_response(404)
          self.send_header("X-Error-Code", "EntryNotFound")
          self.send_header("X-Repo-Commit", COMMIT)
          self.send_header("Content-Length", "0")
          self.end_headers()
          return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
          self.wfile.write(data)

      def do_HEAD(self):  # noqa: N802
        self._answer(body=False)

      def do_GET(self):  # noqa: N802
        self._answer(body=True)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(5)


@pytest.fixture
def env(tmp_path, monkeypatch):
  for var in ("HF_HUB_OFFLINE", "HEAT_JAX_OFFLINE", "HEAT_JAX_SWIN_URL",
              "HEAT_JAX_TEST_HUB_MIRROR"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_DOWNLOAD_TIMEOUT", "10")
  monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  return monkeypatch


@pytest.fixture
def hub(env):
  swin_t = get_checkpoint("Swin-T").hf_repo
  srv = FakeHub({(REPO, "model.safetensors"): safetensors_bytes(ARRAYS),
                 (swin_t, "model.safetensors"): b"swin-t bytes"})
  env.setenv("HF_ENDPOINT", srv.url)
  yield srv
  srv.close()


def _one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message
  return message


def test_download_into_the_hf_cache_then_reuse_offline(tmp_path, hub, env):
  path = fetch_registered(INFO)
  expected = tmp_path / "hf" / "models--acme--swin-test" / "snapshots" / COMMIT
  assert path == expected / "model.safetensors"
  assert ("GET", f"/{REPO}/resolve/main/model.safetensors") in hub.requests
  loaded = load_state_dict(path)  # the Swin reader takes the cached file as it is
  assert set(loaded) == set(ARRAYS)
  for key, value in ARRAYS.items():
    np.testing.assert_array_equal(loaded[key], value)
  assert not (tmp_path / "cache" / "checkpoints" / INFO.path).exists()

  gets = sum(method == "GET" for method, _ in hub.requests)
  assert fetch_registered(INFO) == path  # cached: at most a HEAD, never a second GET
  assert sum(method == "GET" for method, _ in hub.requests) == gets

  env.setenv("HF_HUB_OFFLINE", "1")
  seen = len(hub.requests)
  assert fetch_registered(INFO) == path
  assert len(hub.requests) == seen  # offline: no request at all


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HEAT_JAX_OFFLINE"])
def test_offline_and_not_cached_is_one_clear_line(tmp_path, hub, env, variable):
  env.setenv(variable, "1")
  with pytest.raises(DownloadError) as info:
    fetch_registered(INFO)
  message = _one_line(info)
  assert variable in message and "not in the Hugging Face cache" in message
  assert f"{hub.url}/{REPO}/resolve/main/model.safetensors" in message
  assert f"put it at {tmp_path / 'cache' / 'checkpoints' / INFO.path}" in message
  assert hub.requests == []


def test_file_put_by_hand_is_used_without_network(tmp_path, hub):
  by_hand = tmp_path / "cache" / "checkpoints" / INFO.path
  by_hand.parent.mkdir(parents=True)
  by_hand.write_bytes(b"by hand")
  assert fetch_registered(INFO) == by_hand
  assert hub.requests == []


def test_missing_file_is_an_http_error(hub):
  info = CheckpointInfo(**{**INFO.__dict__, "hf_filename": "nope.safetensors"})
  with pytest.raises(DownloadError) as error:
    fetch_registered(info)
  message = _one_line(error)
  assert "HTTP 404" in message and f"{REPO}/resolve/main/nope.safetensors" in message


def test_unreachable_hub_is_one_clear_line(tmp_path, env):
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
  # huggingface_hub retries an unreachable Hub 5 times with backoff (~23 s in all)
  # before it gives up: skip the waits, keep the retries.
  import huggingface_hub.utils._http as hf_http
  fast = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if n[0] != "_"})
  fast.sleep = lambda seconds: None
  env.setattr(hf_http, "time", fast)
  with pytest.raises(DownloadError) as error:
    fetch_registered(INFO)
  message = _one_line(error)
  assert f"http://127.0.0.1:{port}/{REPO}/resolve/main/model.safetensors" in message
  assert "offline" in message and "put it at" in message
  assert not list((tmp_path / "hf").rglob("model.safetensors"))


def test_plain_mirror_variable_bypasses_the_hub(tmp_path, hub, env):
  """`$HEAT_JAX_SWIN_URL` (a plain mirror of timm's files) keeps the URL download."""
  info = get_checkpoint("Swin-T")
  env.setenv("HEAT_JAX_SWIN_URL", f"{hub.url}/timm")
  path = fetch_registered(info)
  assert path == tmp_path / "cache" / "checkpoints" / info.path
  assert path.read_bytes() == b"swin-t bytes"
  assert [m for m, _ in hub.requests] == ["GET"]  # urllib: one plain GET, no HEAD


def test_registered_swin_name_resolves_through_the_hub(tmp_path, hub):
  """resolve_checkpoint('Swin-T') (what load_pretrained calls) uses hf_hub_download."""
  path = resolve_checkpoint("Swin-T")
  repo_dir = "models--" + get_checkpoint("Swin-T").hf_repo.replace("/", "--")
  assert path == tmp_path / "hf" / repo_dir / "snapshots" / COMMIT / "model.safetensors"
  assert path.read_bytes() == b"swin-t bytes"
