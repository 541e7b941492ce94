"""A run's workdir: checked before anything is read, cleaned up when a run fails early.

`check(workdir)` raises one-line ConfigErrors for a workdir that cannot hold a run (a
file, under a file, not creatable, not writable) and leaves nothing behind. `Undo`
notes what exists before a run; called after a failure it removes what the run created
(the workdir if the run created it, and the parents it created while they are empty),
never anything that was there before. `lock(workdir)` makes a run the only writer of
its workdir: a second run started on it refuses with one line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import shutil
import socket
import tempfile
from typing import Iterator

from heat_jax.errors import ConfigError


def _missing_parents(path: str) -> tuple[str, list[str]]:
  """(nearest existing ancestor of `path` or path itself, the missing dirs top-down)."""
  missing = []
  existing = path
  while not os.path.lexists(existing):
    missing.append(existing)
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent
  return existing, missing[::-1]


def check(workdir: str) -> None:
  """ConfigError unless `workdir` is (or can be created as) a writable directory."""
  if not str(workdir).strip():
    raise ConfigError("the workdir is empty; pass a directory, e.g. --workdir=workdirs/run1")
  path = os.path.abspath(workdir)
  existing, missing = _missing_parents(path)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    raise ConfigError(f"workdir {workdir} {where}; pass a directory (--workdir=DIR)")
  # Try it for real (permissions, read-only mounts and root all answer alike), in the
  # nearest existing folder: creating nothing that a concurrent run might share.
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    verb = "cannot be created" if missing else "is not writable"
    raise ConfigError(f"workdir {workdir} {verb} ({e.strerror or e}); pass a directory "
                      "you can write to (--workdir=DIR)") from None


def has_checkpoint(directory: str) -> bool:
  """Whether a checkpoint directory holds a finished step (orbax names them by step)."""
  try:
    return any(name.isdigit() for name in os.listdir(directory))
  except OSError:
    return False


class Undo:
  """Removes what a run creates in `workdir`, keeping everything that was there before."""

  def __init__(self, workdir: str):
    self.path = os.path.abspath(workdir)
    _, self.missing = _missing_parents(self.path)   # the directories the run creates
    try:
      self.before = set(os.listdir(self.path)) if not self.missing else set()
    except OSError:
      self.before = None   # unreadable: then nothing in it is ever removed

  def __call__(self) -> None:
    if self.missing:
      shutil.rmtree(self.path, ignore_errors=True)
      # Parents go only when empty: another run may be using a sibling workdir.
      for d in reversed(self.missing[:-1]):
        try:
          os.rmdir(d)
        except OSError:
          break
      return
    if self.before is None:
      return
    try:
      names = set(os.listdir(self.path)) - self.before
    except OSError:
      return
    for name in names:
      target = os.path.join(self.path, name)
      if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target, ignore_errors=True)
      else:
        try:
          os.remove(target)
        except OSError:
          pass


LOCK_FILE = ".heat_jax.lock"


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive lock on `workdir` for the block; ConfigError if another run has it.

  `fcntl.flock` on `<workdir>/.heat_jax.lock` (which records the holder's pid, host and
  start time for the message): the kernel releases it when the holder exits in any
  way, so a crashed or killed run never leaves it stuck. Only the primary process of a
  multi-process run takes it. Bucket workdirs (gs://) have no locks: nothing stops two
  runs there, so do not start one twice.
  """
  from heat_jax import distributed
  if "://" in str(workdir) or not distributed.is_primary():
    yield
    return
  import fcntl
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      raise ConfigError(f"workdir {workdir} is in use by another run ({holder}); wait for "
                        "it to finish (rerunning the command then resumes or reports it) "
                        "or pass another --workdir") from None
    except OSError as e:   # e.g. a file system without locks: run unlocked, as before
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
    when = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {when}\n"
              .encode(), 0)
    yield
  finally:
    os.close(fd)   # releases the lock
