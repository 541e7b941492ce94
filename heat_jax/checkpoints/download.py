"""Downloading files into the cache: progress bar, atomic write, clear offline errors."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from heat_jax.errors import DownloadError
from heat_jax.io_utils import atomic_open

DEFAULT_TIMEOUT_S = 15.0


def download(url: str, dest: str | os.PathLike, *, timeout: float | None = None,
             progress: bool = True) -> Path:
  """Downloads `url` to `dest` (atomically) unless `dest` already exists.

  Raises:
    DownloadError: with a one-line message naming the URL, the reason and where to put
      the file by hand.
  """
  dest = Path(dest)
  if dest.exists():
    return dest
  if os.environ.get("HEAT_JAX_OFFLINE"):
    raise DownloadError(f"{dest.name} is not cached and HEAT_JAX_OFFLINE is set; "
                        f"download {url} by hand and put it at {dest}")
  timeout = timeout or float(os.environ.get("HEAT_JAX_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S))
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with atomic_open(dest, "wb") as f, tqdm(
          total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
          disable=not progress, leave=False) as bar:
        received = 0
        while chunk := response.read(1 << 20):
          f.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
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
