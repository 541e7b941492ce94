"""A run's workdir: checked before anything is read, cleaned up when a run fails early.

`check(workdir)` raises one-line ConfigErrors for a workdir that cannot hold a run (a
file, under a file, not creatable, not writable) and leaves nothing behind. `Undo`
notes what exists before a run; called after a failure it removes what the run created
(the workdir if the run created it, and the parents it created while they are empty),
never anything that was there before.
"""

from __future__ import annotations

import os
import shutil
import tempfile

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
