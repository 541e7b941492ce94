"""Running a `main` under absl with the project's command-line contract.

Bad flags and `UserError`s print one line `error: ...` and exit 2; `--help`,
`--helpshort` and `--helpfull` print the main module's docstring and flags and exit 0
(absl's own help exits 1). Used by run.py (`heat_jax.cli`) and the data entry points.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

from heat_jax import logs
from heat_jax.errors import UserError

FLAGS = flags.FLAGS
_HELP = {"help", "helpshort", "helpfull", "?"}
# Turns an error raised while parsing flags into the one line printed after `error:`.
Explain = Callable[[BaseException], Optional[str]]


def fail(message: str) -> int:
  """Prints `error: <message>` as one line on stderr; returns the exit code 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  return 2


def _asks_for_help(argv: Sequence[str]) -> bool:
  return bool({a.split("=")[0].lstrip("-") for a in argv[1:]} & _HELP)


def parse_flags(argv: list[str], explain: Optional[Explain] = None) -> list[str]:
  """absl flag parsing; returns argv without flags (program name first).

  `explain(e)` may turn any exception of the parse (e.g. a config file that does not
  load) into one line; returning None leaves flag errors to the default line and
  re-raises anything else.
  """
  try:
    return FLAGS(argv)
  except SystemExit as e:
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise
  except UserError as e:
    sys.exit(fail(e.one_line()))
  except Exception as e:  # pylint: disable=broad-except
    line = explain(e) if explain is not None else None
    if line is not None:
      sys.exit(fail(line))
    if isinstance(e, flags.Error):
      sys.exit(fail(f"{e}; see --help"))
    raise


def own_usage(flag_values: flags.FlagValues, doc: str) -> str:
  """`doc` and the flags of a module's own flag set (absl's module heading dropped)."""
  text = flag_values.get_help(include_special_flags=False)
  text = "\n".join(l for l in text.splitlines() if not l.rstrip().endswith(".py:"))
  return f"{doc}\nflags:\n{text}\n"


def parse_own_flags(flag_values: flags.FlagValues, argv: Sequence[str], *, doc: str,
                    example: str, workdir_example: str) -> Optional[int]:
  """Parses `argv` (argv[0] = program) into a module's own flag set, which defines
  `--help` and `--workdir` (entry points callable as functions next to run.py's flags).

  Returns None when there is something to run, else the exit code: 0 after printing the
  help, 2 after one `error:` line (a bad flag, a stray argument, no --workdir).
  """
  flag_values.unparse_flags()
  try:
    rest = flag_values(list(argv))
  except flags.Error as e:
    return fail(f"{e} (see --help)")
  if flag_values.help:
    print(own_usage(flag_values, doc))
    return 0
  if len(rest) > 1:
    return fail(f"unexpected argument {rest[1]!r}; flags look like {example} (see --help)")
  if not flag_values.workdir:
    return fail(f"--workdir is required, e.g. --workdir={workdir_example}")
  return None


def run(main: Callable[[list[str]], int], define_flags: Callable[[], None],
        argv: Optional[Sequence[str]] = None, *,
        explain: Optional[Explain] = None) -> NoReturn:
  """Defines the flags, parses `argv` (default sys.argv) and exits with main's code."""
  define_flags()

  def guarded(args: list[str]) -> int:
    logs.setup()   # under app.run: our INFO on stderr, other libraries' hidden
    try:
      return main(args)
    except UserError as e:
      return fail(e.one_line())

  app.run(guarded, argv=list(sys.argv if argv is None else argv),
          flags_parser=lambda args: parse_flags(args, explain))
  raise AssertionError("absl.app.run returned")  # it always exits
