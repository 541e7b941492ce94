"""The command line (`heat-jax`, or `python run.py` in a checkout): absl flags + a config.

A config's `job` field picks what runs: `train` (default, `experiment.run`; its
one-line result goes to stdout) or `study` (the demo study over several methods; its
table goes to stdout). Logs (absl) and progress bars go to stderr. Bad input (flags,
config files, config values, data, checkpoints, the workdir) prints one line
`error: ...` on stderr and exits with code 2; `--help` exits 0 (`heat_jax.absl_cli`).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from heat_jax import absl_cli, config_names, preemption
from heat_jax.errors import ConfigError, UserError
from heat_jax.io_utils import storage_error

FLAGS = flags.FLAGS
USAGE = """Trains and evaluates one PETL run (or the built-in demo study) from a config.

Usage (`heat-jax` is the installed command; `python run.py` in a checkout is the same):
  heat-jax                                         # the offline demo study (--config=demo)
  heat-jax --config=smoke:method=lora --workdir=/tmp/smoke   # seconds, on a CPU
  heat-jax --config=vtab:dtd --workdir=workdirs/dtd
  heat-jax --config=vtab:dtd,method=lora,rank=8 --config.train.epochs=10
  heat-jax --config=folder:root=my_images          # your own DIR/<class>/*.jpg
  python run.py --config=configs/vtab.py:dtd       # a config file path works too

--config is a packaged config name ({names}) or a Python file whose get_config(arg)
builds the config; the text after ':' is its arg (see the config's docstring in
heat_jax/configs/). Any field can then be set with --config.<field>=<value>, e.g.
  --config.method.name=lora        {methods}
  --config.model.name=Swin-B       --config.model.pretrained=/path/to/ViT-B_16.npz
  --config.heat.budget=0.5         (a float in (0, 1.0] is a fraction, an int a count)
  --config.optim.lr=1e-3  --config.seed=1
  --config.train.resume=False      start over instead of resuming in --workdir
Every field and its default: heat_jax/configs/common.py (base_config).

The workdir (default workdirs/<task>/<method>) ends up with results.json,
adapter.npz/json and metrics.jsonl. Rerunning a training command resumes it from its
last checkpoint, or reports its results when it finished. The demo study always reruns
its runs afresh (only its pretrained backbone is reused).

Exit codes: 0 done; 2 bad input (one line 'error: ...' on stderr says what to fix);
130 interrupted (rerun the same command to resume a training run); 75 preempted
(SIGTERM: a checkpoint was saved; rerun the same command to resume). --verbosity=1 also
shows the libraries' INFO logs (orbax, TFDS) and the inner lines of each demo run (its
one-line result shows without it); --helpfull lists every flag.
"""


def usage() -> str:
  """The --help text, with the packaged configs and the registered methods."""
  from heat_jax.methods import available_methods
  return USAGE.format(names=", ".join(config_names.available()),
                      methods=" | ".join(available_methods()))


def demo_config_path() -> str:
  """The config of a bare `heat-jax`: the packaged demo study."""
  return str(config_names.config_dir() / "demo.py")


def _define_flags(default_config: str) -> None:
  if "config" in FLAGS:
    return
  config_flags.DEFINE_config_file(
      "config", default_config, "Packaged config name or config file, and its args, e.g. "
      "vtab:dtd,method=lora or configs/vtab.py:dtd,method=lora; single fields are set with "
      "--config.<field>=value, e.g. --config.train.epochs=10.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and artifacts "
                      "(default: workdirs/<task>/<method>, or workdirs/demo for the study). "
                      "Rerunning a command with the same workdir resumes or reports it.")
  # Multi-process runs (jax.distributed); not needed under SLURM, Open MPI or on a TPU pod.
  flags.DEFINE_string("coordinator_address", None, "Multi-process run: HOST:PORT of "
                      "process 0, the same in every process.")
  flags.DEFINE_integer("num_processes", None, "Multi-process run: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, "
                       "0 .. num_processes-1 (0 writes the results).")
  flags.DEFINE_list("local_device_ids", None, "Multi-process run: the local GPU ids this "
                    "process uses, e.g. 0,1 (default: all visible).")


# ----------------------------------------------------------------------------- config errors


def _chain(e: BaseException) -> list[BaseException]:
  chain = [e]
  while (chain[-1].__cause__ or chain[-1].__context__) and len(chain) < 20:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  return chain


def _override_error(e: BaseException) -> Optional[str]:
  """`--config.a.b=value` with a value of the wrong type, as one line."""
  text = str(e)
  if not text.startswith("flag --config.") or "=" not in text.split(":")[0]:
    return None
  flag, _, reason = text.partition(": ")
  field, _, value = flag[len("flag --"):].partition("=")
  if "as a ConfigDict" in reason:   # --config.method=lora: a block set to a plain value
    return block_value_line(field, value)
  kind = ("an integer" if "for int()" in reason else
          "a number" if "to float" in reason else
          "True or False" if "boolean" in reason else None)
  if kind:
    return f"{field} must be {kind}, got {value!r} (from --{field}={value})"
  return f"bad value --{field}={value}: {reason}"


def block_value_line(field: str, value: str) -> str:
  """The line for `--config.<block>=value`: name the block's fields to set instead."""
  block = field.split(".", 1)[1] if "." in field else field
  from heat_jax.configs.common import base_config
  node = base_config()
  for part in block.split("."):
    node = node.get(part) if hasattr(node, "get") else None
  fields = list(node.keys()) if hasattr(node, "keys") else []
  first = "name" if "name" in fields else (fields[0] if fields else "<field>")
  listed = f" (its fields: {', '.join(fields)})" if fields else ""
  return (f"{field} is a block of fields, not a value{listed}; set one of them, e.g. "
          f"--{field}.{first}={value}")


def config_error_line(e: BaseException, config_arg: str = "") -> Optional[str]:
  """One line for an error of loading the config file or applying overrides to it.

  None for plain flag errors (unknown flag, missing value), which absl_cli words.
  """
  chain = _chain(e)
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
  if isinstance(e, flags.Error):
    line = _override_error(e)
    if line is not None or not str(e).startswith("flag --config="):
      return line
  root = chain[-1]
  lines = [l.strip() for l in str(root).splitlines() if l.strip()]
  what = f"the config {config_arg!r}" if config_arg else "the config"
  reason = lines[-1] if lines else ""
  if isinstance(root, OSError) and (root.errno == errno.ENOENT or "No such file" in reason):
    return (f"cannot load {what}: the file does not exist (pass a packaged config, "
            f"{', '.join(config_names.available())}, or a file: --config=path/file.py[:args])")
  if isinstance(root, AttributeError) and "get_config" in reason:
    return (f"cannot load {what}: the file defines no get_config(arg) function that "
            "returns the config")
  return (f"cannot load {what}: {type(root).__name__}: {reason} (fix the file or pass "
          "a packaged config, e.g. --config=smoke)")


def _config_arg(argv: Sequence[str]) -> str:
  for arg in reversed(list(argv)):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
  return ""


def _config_filename() -> str:
  return str(getattr(FLAGS["config"], "config_filename", "") or "")


def load_config():
  """FLAGS.config, loaded and checked; ConfigError with one line if it does not load."""
  try:
    config = FLAGS.config
    if config is not None:
      config.get("job")  # config_flags loads lazily: surface load errors here
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a config file is user code)
    raise ConfigError(config_error_line(e, _config_filename())) from None
  if not hasattr(config, "get") or not hasattr(config, "to_dict"):
    raise ConfigError(f"get_config() of {_config_filename()} returned "
                      f"{type(config).__name__}, not an ml_collections.ConfigDict; "
                      "add `return config` at its end")
  return config


# ----------------------------------------------------------------------------- the job


def default_workdir(config) -> str:
  if config.get("job", "train") == "study":
    return os.path.join("workdirs", "demo")
  task = config.data.get("task") or "run"
  return os.path.join("workdirs", str(task), str(config.method.name))


def resolve_workdir(flag_value: Optional[str], config) -> str:
  """The workdir: the flag's value, or the default when the flag is not given."""
  if flag_value is None:
    return default_workdir(config)
  if not flag_value.strip():
    raise ConfigError("--workdir is empty; pass a directory (--workdir=DIR) or leave the "
                      "flag out for the default workdirs/<task>/<method>")
  return flag_value


def _start_processes(config) -> None:
  """Joins a multi-process run (flags or a detected launcher) before any device use."""
  from heat_jax import distributed
  try:
    ids = [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None
  except ValueError:
    raise ConfigError(f"--local_device_ids must be integers, got "
                      f"{','.join(FLAGS.local_device_ids)}") from None
  started = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id, ids)
  if started and config.get("job", "train") == "study":
    raise ConfigError("the demo study runs in one process; start it without "
                      "--coordinator_address/--num_processes/--process_id")


def _job(argv: Sequence[str]) -> int:
  """absl main: runs the configured job; returns the exit code."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}; flags look like --config=FILE "
                      "or --config.train.epochs=10 (see --help)")
  config = load_config()
  workdir = resolve_workdir(FLAGS.workdir, config)
  _start_processes(config)
  try:
    if config.get("job", "train") == "study":
      from heat_jax import study
      study.run(config, workdir)   # prints its table on stdout
    else:
      from heat_jax import experiment
      print(experiment.summary_line(experiment.run(config, workdir)), flush=True)
  except KeyboardInterrupt:
    end_progress_bars()   # the message on a line of its own, not inside a bar
    if config.get("job", "train") == "study":
      print("interrupted; rerunning the command runs the study afresh (a finished "
            "pretraining of its backbone is reused)", file=sys.stderr)
    else:
      print("interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  except preemption.Preempted as e:   # SIGTERM: saved, resumable (heat_jax.preemption)
    end_progress_bars()
    print(e.one_line(), file=sys.stderr)
    return preemption.EXIT_CODE
  except OSError as e:   # a full / read-only disk in a write that has no message of its own
    error = storage_error(e, e.filename or workdir)
    if error is None:
      raise
    return absl_cli.fail(error.one_line())
  return 0


def end_progress_bars() -> None:
  """Closes every open tqdm bar, so that what is printed next starts a fresh line."""
  from tqdm import tqdm
  for bar in list(getattr(tqdm, "_instances", ())):
    bar.close()


def run(argv: Optional[Sequence[str]] = None,
        default_config: Optional[str] = None) -> NoReturn:
  """What `heat-jax` / `python run.py` does: parses `argv` (default sys.argv), runs, exits."""
  argv = list(sys.argv if argv is None else argv)
  try:
    resolved = config_names.resolve_argv(argv)   # --config=smoke -> its packaged file
  except ConfigError as e:
    sys.exit(absl_cli.fail(e.one_line()))
  main_module = sys.modules.get("__main__")
  if main_module is not None:
    main_module.__doc__ = usage()   # what --help prints (absl reads __main__'s docstring)

  def define() -> None:
    _define_flags(default_config or demo_config_path())
    # --help lists the flags of the main script (run.py); they are defined here.
    for flag in FLAGS.get_key_flags_for_module(__name__):
      FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  absl_cli.run(_job, define, resolved,
               explain=lambda e: config_error_line(e, _config_arg(argv)))


def main(argv: Sequence[str], default_config: Optional[str] = None) -> int:
  """`run` returning the exit code instead of exiting (for tests and drivers)."""
  try:
    run(argv, default_config)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return 0


if __name__ == "__main__":   # `python -m heat_jax.cli`: a sweep's jobs when installed
  run()
