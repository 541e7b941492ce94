"""Packaged config names: `--config=smoke:method=lora` besides `--config=path/file.py:arg`.

The configs ship inside the package (`heat_jax/configs/<name>.py`), so the installed
`heat-jax` command finds them from any directory. A `--config` value whose part before
the first ':' has no path separator and no `.py` suffix is such a name; anything else
is a file path, as config_flags reads it (relative to the current directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from heat_jax.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
_PRIVATE = ("__init__", "common")   # modules of the config package that are not configs


def config_dir() -> Path:
  """The folder of the packaged config files (heat_jax/configs)."""
  return _PACKAGE / "configs"


def available() -> list[str]:
  """The packaged config names, sorted (demo, folder, smoke, vtab, ...)."""
  return sorted(p.stem for p in config_dir().glob("*.py")
                if p.stem not in _PRIVATE and not p.stem.startswith("_"))


def is_name(value: str) -> bool:
  """Whether a --config value names a packaged config rather than a file."""
  name = value.split(":", 1)[0]
  return bool(name) and not name.endswith(".py") and "/" not in name and os.sep not in name


def resolve(value: str) -> str:
  """`name[:arg]` -> `<packaged file>[:arg]`; a file path is returned unchanged.

  ConfigError for an unknown name (listing the packaged ones).
  """
  if not is_name(value):
    return value
  name, sep, arg = value.partition(":")
  path = config_dir() / f"{name}.py"
  if name in _PRIVATE or not path.is_file():
    if os.path.isfile(name):   # a config file without the .py suffix, in this folder
      return value
    raise ConfigError(f"--config={value}: {name!r} is neither a packaged config "
                      f"({', '.join(available())}) nor a file; e.g. --config=smoke or "
                      "--config=path/to/my_config.py:args")
  return f"{path}{sep}{arg}"


def resolve_argv(argv: list[str]) -> list[str]:
  """argv with every `--config=NAME[:arg]` (or `--config NAME`) resolved to its file."""
  out, i = list(argv), 1
  while i < len(out):
    arg = out[i]
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        out[i] = prefix + resolve(arg[len(prefix):])
    if arg in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
      i += 1
    i += 1
  return out
