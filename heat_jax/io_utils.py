"""Small file helpers: atomic writes, hashing, cache directory, storage errors.

Workdir files go through `etils.epath`, so a workdir may be local or a bucket
(`gs://...`, as in big_vision; reading gs:// needs gcsfs or TensorFlow installed).
On a bucket there is no rename: an atomic write is the one upload of the complete
file (object stores publish an object only when its upload completes).

A write that fails for lack of space, a read-only file system or a vanished folder
raises `StorageError` with one line naming the path and the space needed
(`storage_error`); the temporary file is removed, so the previous file (if any) stays.
"""

from __future__ import annotations

import contextlib
import errno
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

from heat_jax.errors import StorageError

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


# errno of a failed write that is about the storage, not the data written.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large",
            errno.ENOENT: "its folder does not exist (anymore)",
            errno.EACCES: "permission denied", errno.EIO: "an I/O error"}
_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS}


def human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} PB"


def free_bytes(path: PathLike) -> int | None:
  """Free space of the file system holding `path` (its nearest existing folder)."""
  if is_remote(path):
    return None
  p = os.path.abspath(os.fspath(path))
  while p and not os.path.isdir(p):
    parent = os.path.dirname(p)
    if parent == p:
      return None
    p = parent
  try:
    return shutil.disk_usage(p).free
  except OSError:
    return None


def storage_errno(e: BaseException) -> int | None:
  """The storage errno of `e` or of an error it wraps (orbax and tensorstore wrap them)."""
  seen = 0
  while e is not None and seen < 20:
    if isinstance(e, OSError) and e.errno in _REASONS:
      return e.errno
    for text, code in _MESSAGES.items():
      if text in str(e):
        return code
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def storage_error(e: BaseException, path: PathLike, needed: int | None = None, *,
                  at_least: bool = False) -> StorageError | None:
  """One line for a failed write of `path` (None if `e` is not about the storage)."""
  code = storage_errno(e)
  if code is None:
    return None
  free = free_bytes(path)
  space = ""
  if needed:
    space = f"; it needs {'more than ' if at_least else 'about '}{human_bytes(needed)}"
    if free is not None:
      space += f", {human_bytes(free)} are free there"
  elif free is not None:
    space = f"; {human_bytes(free)} are free there"
  return StorageError(f"cannot write {os.fspath(path)}: {_REASONS[code]}{space}; nothing "
                      "was left half-written: free space (or fix the folder) and rerun "
                      "the same command")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *,
                size_hint: int | None = None) -> Iterator[io.IOBase]:
  """Opens a temporary file next to `path`; renames it over `path` on success.

  For a bucket path the file is built in memory and uploaded once on success. A write
  that fails for lack of space (or a read-only / vanished folder) raises StorageError
  (`size_hint`: the bytes the file needs, for the message); the temporary file goes.
  """
  if is_remote(path):
    buffer: io.IOBase = io.BytesIO() if "b" in mode else io.StringIO()
    yield buffer
    data = buffer.getvalue()
    try:
      with as_path(path).open("wb" if "b" in mode else "w") as f:
        f.write(data)
    except OSError as e:
      raise storage_error(e, path, len(data)) or e from None
    return
  path = Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  except OSError as e:
    raise storage_error(e, path, size_hint) or e from None
  umask = os.umask(0)
  os.umask(umask)
  in_body, written = False, 0   # in_body: the caller's code raised
  try:
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise users
    with os.fdopen(fd, mode) as f:
      try:
        yield f
      except BaseException:
        in_body = True
        raise
      finally:
        with contextlib.suppress(OSError, ValueError):
          written = f.tell()
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    if isinstance(e, OSError) and (not in_body or e.errno in WRITE_ERRNOS):
      error = storage_error(e, path, size_hint or written or None,
                            at_least=not size_hint)
      if error is not None:
        raise error from None
    raise


def write_json(path: PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: PathLike, text: str) -> None:
  data = text.encode()
  with atomic_open(path, "wb", size_hint=len(data)) as f:
    f.write(data)


def write_npz(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes a flat dict of arrays as an uncompressed `.npz`, atomically."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  size = sum(a.nbytes for a in arrays.values())
  with atomic_open(path, "wb", size_hint=size + 1024 * (1 + len(arrays))) as f:
    np.savez(f, **arrays)


def write_npy(path: PathLike, array: np.ndarray) -> None:
  with atomic_open(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
  """Loads every array of an `.npz` without ever unpickling.

  ValueError (never a huge allocation) for a member whose header claims more bytes than
  the member holds, as a crafted or corrupt file may.
  """
  source = io.BytesIO(as_path(path).read_bytes()) if is_remote(path) else path
  with np.load(source, allow_pickle=False) as data:
    for info in data.zip.infolist():
      _check_member_size(data.zip, info)
    try:
      return {k: data[k] for k in data.files}
    except MemoryError:
      raise ValueError(f"{os.fspath(path)} holds arrays too large for this machine's "
                       "memory") from None


def _check_member_size(archive: Any, info: Any) -> None:
  """ValueError if an .npy member's header claims more data than the member holds."""
  if not info.filename.endswith(".npy"):
    return
  with archive.open(info) as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = info.file_size - f.tell()
  if claimed > held:
    raise ValueError(f"member {info.filename} claims shape {tuple(shape)} "
                     f"({human_bytes(claimed)}) but holds {human_bytes(held)}; the file is "
                     "corrupt or was not written by numpy")


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
