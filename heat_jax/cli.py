"""Thin entry point: absl flags + ml_collections config files -> a job.

A config's `job` field picks what runs: `train` (default, `experiment.run`; its
one-line result goes to stdout) or `study` (the demo study over several methods; its
table goes to stdout). Logs (absl) and progress bars go to stderr. `UserError`s become
one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from heat_jax.errors import UserError

FLAGS = flags.FLAGS


def _define_flags(default_config: str) -> None:
  if "config" in FLAGS:
    return
  config_flags.DEFINE_config_file(
      "config", default_config, "Config file, e.g. configs/vtab.py:dtd,method=lora.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and artifacts "
                      "(default: workdirs/<task>/<method>).")


def _fail(message: str) -> int:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  return 2


def _config_error_line(e: BaseException) -> str:
  """One line from config_flags' nested, multi-line load errors."""
  chain = [e]
  while chain[-1].__cause__ or chain[-1].__context__:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  for err in chain:
    if isinstance(err, UserError):
      return err.one_line()
  for err in chain:
    if isinstance(err, KeyError) and err.args:  # unknown field in an override
      text = str(err.args[0]).splitlines()
      name = text[0].strip("'\"")
      hint = f" {text[1]}" if len(text) > 1 else ""
      return (f"unknown config field {name!r} in an override.{hint} The fields are "
              "listed in configs/common.py (base_config)")
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  if len(lines) > 1 and "config file" in lines[0]:
    return f"cannot load the config: {lines[-1]} (check --config=configs/<file>.py:<args>)"
  return f"bad config: {' '.join(lines) or type(e).__name__}"


def default_workdir(config) -> str:
  if config.get("job", "train") == "study":
    return os.path.join("workdirs", "demo")
  task = config.data.get("task") or "run"
  return os.path.join("workdirs", str(task), str(config.method.name))


def main(argv: Sequence[str], default_config: Optional[str] = None) -> int:
  """Parses flags and runs the configured job; returns the exit code."""
  _define_flags(default_config or "configs/demo.py")
  try:
    FLAGS(list(argv))
    config = FLAGS.config
    config.get("job")  # config_flags loads lazily: surface load errors here
  except flags.Error as e:
    return _fail(str(e).splitlines()[0] if str(e) else repr(e))
  except UserError as e:
    return _fail(e.one_line())
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    return _fail(_config_error_line(e))
  if config is None:
    return _fail("no config; pass --config=configs/<file>.py[:args]")
  from heat_jax import logs
  logs.cli_defaults()   # INFO on stderr as under app.run; --verbosity / --log_dir apply
  workdir = FLAGS.workdir or default_workdir(config)
  try:
    if config.get("job", "train") == "study":
      from heat_jax import study
      study.run(config, workdir)   # prints its table on stdout
    else:
      from heat_jax import experiment
      print(experiment.summary_line(experiment.run(config, workdir)), flush=True)
  except UserError as e:
    return _fail(e.one_line())
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  return 0
