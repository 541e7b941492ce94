"""Small file helpers: atomic writes, hashing, cache directory.

Workdir files go through `etils.epath`, so a workdir may be local or a bucket
(`gs://...`, as in big_vision; reading gs:// needs gcsfs or TensorFlow installed).
On a bucket there is no rename: an atomic write is the one upload of the complete
file (object stores publish an object only when its upload completes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """True for bucket paths (gs://, s3://, ...), which have no local file behind them."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """An `epath.Path` for a local path or a bucket URI."""
  return epath.Path(path)


def read_json(path: PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def remove_tree(path: PathLike) -> None:
  """Removes a directory tree if it exists (local or bucket)."""
  p = as_path(path)
  if not is_remote(path):
    shutil.rmtree(p, ignore_errors=True)
  elif p.exists():
    p.rmtree()


def remove_file(path: PathLike) -> None:
  """Removes a file if it exists (local or bucket)."""
  p = as_path(path)
  if p.exists() and not p.is_dir():
    p.unlink()


def cache_dir(*parts: str) -> Path:
  """Returns `$HEAT_JAX_CACHE/<parts>` (default `~/.cache/heat_jax`), created."""
  root = os.environ.get("HEAT_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "heat_jax")
  path = Path(root, *parts)
  path.mkdir(parents=True, exist_ok=True)
  return path


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
  """Opens a temporary file next to `path`; renames it over `path` on success.

  For a bucket path the file is built in memory and uploaded once on success.
  """
  if is_remote(path):
    buffer: io.IOBase = io.BytesIO() if "b" in mode else io.StringIO()
    yield buffer
    data = buffer.getvalue()
    with as_path(path).open("wb" if "b" in mode else "w") as f:
      f.write(data)
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise users
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_json(path: PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  with atomic_open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")


def write_text(path: PathLike, text: str) -> None:
  with atomic_open(path, "w") as f:
    f.write(text)


def write_npz(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes a flat dict of arrays as an uncompressed `.npz`, atomically."""
  with atomic_open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def write_npy(path: PathLike, array: np.ndarray) -> None:
  with atomic_open(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
  """Loads every array of an `.npz` without ever unpickling."""
  source = io.BytesIO(as_path(path).read_bytes()) if is_remote(path) else path
  with np.load(source, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  """Hex sha256 of a file, cached in `$HEAT_JAX_CACHE/sha256` (never beside the file).

  The cache entry is keyed by the absolute path and holds the file's size, mtime (ns),
  ctime (ns) and inode, so any change to the file (or a file replaced at the same
  path) is hashed again. An unwritable cache only costs the reread.
  """
  path = Path(path).resolve()
  stat = path.stat()
  stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"
  entry = _hash_cache_entry(path)
  if entry is not None:
    with contextlib.suppress(OSError, ValueError):
      cached_stamp, digest = entry.read_text().split()
      if cached_stamp == stamp and len(digest) == 64:
        return digest
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  digest = h.hexdigest()
  if entry is not None:
    with contextlib.suppress(OSError):
      write_text(entry, f"{stamp} {digest}\n")
  return digest


def _hash_cache_entry(path: Path) -> Path | None:
  """The cache file for an absolute path, or None when the cache dir is unusable."""
  try:
    folder = cache_dir("sha256")
  except OSError:
    return None
  return folder / hashlib.sha256(str(path).encode()).hexdigest()[:40]


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, os.PathLike):   # pathlib and epath paths
    return os.fspath(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
