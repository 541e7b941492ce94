"""Running a module's `main` under absl with the project's command-line contract.

Bad flags and `UserError`s print one line `error: ...` and exit 2; `--help` prints the
main module's docstring and flags and exits 0 (absl's own help exits 1).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from absl import app, flags

from heat_jax.errors import UserError

FLAGS = flags.FLAGS
_HELP = {"help", "helpshort", "helpfull", "?"}


def fail(message: str) -> int:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  return 2


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; returns argv without flags (program name first)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(f"{e}; see --help"))
  except SystemExit as e:
    if e.code == 1 and {a.split("=")[0].lstrip("-") for a in argv[1:]} & _HELP:
      sys.exit(0)
    raise


def run(main: Callable[[list[str]], int], define_flags: Callable[[], None],
        argv: Optional[Sequence[str]] = None) -> None:
  """Defines the flags, parses `argv` (default sys.argv) and exits with main's code."""
  define_flags()

  def guarded(args: list[str]) -> int:
    try:
      return main(args)
    except UserError as e:
      return fail(e.one_line())

  app.run(guarded, argv=list(sys.argv if argv is None else argv), flags_parser=parse_flags)
