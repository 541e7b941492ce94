"""Thin entry point: absl flags + ml_collections config files -> a job.

A config's `job` field picks what runs: `train` (default, `experiment.run`) or
`study` (the demo study over several methods). `UserError`s become one line on stderr
and exit code 2.
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


def default_workdir(config) -> str:
  task = config.data.get("task") or "run"
  return os.path.join("workdirs", str(task), str(config.method.name))


def main(argv: Sequence[str], default_config: Optional[str] = None) -> int:
  """Parses flags and runs the configured job; returns the exit code."""
  _define_flags(default_config or "configs/demo.py")
  try:
    FLAGS(list(argv))
    config = FLAGS.config
  except flags.Error as e:
    return _fail(str(e).splitlines()[0] if str(e) else repr(e))
  except UserError as e:
    return _fail(e.one_line())
  except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    return _fail(f"bad config: {e}")
  if config is None:
    return _fail("no config; pass --config=configs/<file>.py[:args]")
  workdir = FLAGS.workdir or default_workdir(config)
  try:
    if config.get("job", "train") == "study":
      from heat_jax import study
      study.run(config, workdir)
    else:
      from heat_jax import experiment
      experiment.run(config, workdir)
  except UserError as e:
    return _fail(e.one_line())
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  return 0
