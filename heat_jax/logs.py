"""How heat_jax reports: `absl.logging` on stderr, results on stdout.

Every message of the library goes through `absl.logging` (INFO: what a run is doing;
DEBUG, i.e. `--verbosity=1`: the per-run lines of a study). Under `absl.app.run`
(run.py, `python -m heat_jax.predict`, the data CLIs) absl shows INFO on stderr, and
its flags apply: `--verbosity=-1` keeps warnings only, `--log_dir=DIR` writes log files,
`--logtostderr` / `--alsologtostderr` choose the stream. Progress bars (tqdm) also use
stderr, so stdout carries only what a command produces: the one-line result of a run,
the demo study's table, predictions.

Outside app.run (a notebook, a script) absl would drop INFO; `setup()`, called when a
job starts, shows INFO there too unless the user chose a level
(`absl.logging.set_verbosity(...)`) or absl's flags were parsed.

Other libraries' INFO lines (orbax writes ~40 per checkpoint save, TFDS one per
dataset lookup, jax its own) are kept to WARNING and above unless `--verbosity>=1`.
"""

from __future__ import annotations

import logging as std_logging
import os
import re

from absl import flags, logging

# Libraries whose INFO lines are hidden at the default verbosity (the user's own and
# heat_jax's lines always show).
CHATTY = ("orbax", "tensorflow_datasets", "etils", "jax", "jaxlib", "flax", "absl")


# TFDS warns about a version folder it only guessed (`dtd/3.0.1` under an empty data
# dir): noise before heat_jax's own "not prepared" error, dropped when it does not exist.
_NO_INFO = re.compile(r"Variant folder (\S+) has no dataset_info\.json")


def _spurious(record: std_logging.LogRecord) -> bool:
  match = _NO_INFO.search(str(record.msg) if not record.args else record.getMessage())
  return bool(match) and not os.path.exists(match.group(1))


class _HideChatty(std_logging.Filter):
  """Drops INFO records of CHATTY packages unless absl's verbosity is DEBUG or more."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if _spurious(record):
      return False
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= logging.DEBUG:
      return True
    path = os.path.abspath(record.pathname)
    return not any(f"{os.sep}{name}{os.sep}" in path for name in CHATTY)


_FILTER = _HideChatty()


def setup() -> None:
  """Hides other libraries' INFO; shows INFO outside app.run unless a level was chosen."""
  # On absl's logger (libraries logging through absl) and on its handler (the standard
  # logging records that reach it under app.run, e.g. jax's).
  for target in (logging.get_absl_logger(), logging.get_absl_handler()):
    if _FILTER not in target.filters:
      target.addFilter(_FILTER)
  absl_logger = logging.get_absl_logger()
  if flags.FLAGS.is_parsed() or absl_logger.level != std_logging.NOTSET:
    return
  logging.set_verbosity(logging.INFO)
