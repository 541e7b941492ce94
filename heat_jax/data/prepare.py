"""Prepare TFDS datasets as array_record so that training reads them without TensorFlow.

Usage:
  python -m heat_jax.data.prepare dtd svhn --data_dir=DIR
  python -m heat_jax.data.prepare all --data_dir=gs://bucket/tfds
  python -m heat_jax.data.prepare resisc45 --data_dir=DIR --manual_dir=DIR_WITH_THE_RAR
  python -m heat_jax.data.prepare --list

Tasks (positional) are VTAB ids (`--list`; `all` = the 19 tasks; `cifar` = cifar100) or
raw TFDS names with optional config and version (`mnist:3.*.*`). Names, --data_dir and
--manual_dir are checked first; official TFDS builders then need TensorFlow to prepare
(once): `pip install -e ".[tf]"`. Bad input prints one line `error: ...` and exits 2;
a dataset that fails to prepare exits 1.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags, logging

from heat_jax import absl_cli
from heat_jax.data.tfds_source import (_first_line, check_data_dir, not_found_reason,
                                       raise_open_file_limit, resolve_data_dir)
from heat_jax.data.vtab_tasks import ALIASES, MANUAL_INSTRUCTIONS, TASK_NAMES, TASKS
from heat_jax.errors import ConfigError, UserError

FLAGS = flags.FLAGS
NO_TF_MESSAGE = ('preparing TFDS datasets needs TensorFlow, which is not installed: run '
                 'pip install -e ".[tf]" (tensorflow-cpu), then run this command again')


def define_flags() -> None:
  """The command's flags (defined on first use, so importing this module defines none)."""
  if "manual_dir" in FLAGS:
    return
  flags.DEFINE_string("data_dir", "", "Where the prepared datasets go (a local directory, "
                      "created if missing, or gs://...); default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets.")
  flags.DEFINE_string("manual_dir", "", "Folder holding manual downloads (resisc45, "
                      "diabetic_retinopathy); default: <data_dir>/downloads/manual.")
  flags.DEFINE_bool("list", False, "Print the 19 VTAB tasks (group, TFDS name) and exit.")


def resolve_targets(names: Sequence[str]) -> list[tuple[str, str]]:
  """[(label, tfds name)] for VTAB ids, `all` or raw TFDS names, each TFDS name once."""
  targets: dict[str, str] = {}
  for name in names:
    for item in (TASK_NAMES if name == "all" else [ALIASES.get(name, name)]):
      tfds_name = TASKS[item].tfds_name if item in TASKS else item
      targets.setdefault(tfds_name, item)
  return [(label, tfds_name) for tfds_name, label in targets.items()]


def check_names(targets: Sequence[tuple[str, str]]) -> None:
  """ConfigError for a name that is neither a VTAB id nor a buildable TFDS name.

  Raw TFDS names (with config and version) are checked by constructing the builder
  over an empty temporary directory: that needs TFDS but not TensorFlow, and reads
  and writes nothing else.
  """
  raw = [(label, name) for label, name in targets if label not in TASKS]
  if not raw:
    return
  import tensorflow_datasets as tfds
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)   # TFDS logs every failed lookup at INFO
  try:
    with tempfile.TemporaryDirectory(prefix="heat_jax-names-") as empty:
      for label, name in raw:
        try:
          tfds.builder(name, data_dir=empty)
        except tfds.core.registered.DatasetNotFoundError:
          raise ConfigError(_unknown_name(label, name)) from None
        except Exception as e:  # pylint: disable=broad-except
          raise ConfigError(f"TFDS dataset {name!r}: {_first_line(e)}") from None
  finally:
    logging.set_verbosity(verbosity)


def _unknown_name(label: str, name: str) -> str:
  if ":" not in name:
    close = difflib.get_close_matches(label, [*TASK_NAMES, *ALIASES, "all"], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see --list"
    return (f"unknown task {label!r}: not a VTAB task id, 'all' or a TFDS dataset name "
            f"(name[/config][:version]){hint}")
  return f"TFDS dataset {name!r}: {not_found_reason(name)}"


def check_manual_dir(manual_dir: str) -> None:
  if manual_dir and "://" not in manual_dir and not os.path.isdir(manual_dir):
    what = "is not a directory" if os.path.exists(manual_dir) else "does not exist"
    raise ConfigError(f"--manual_dir={manual_dir} {what}; put the manual downloads in a "
                      "folder and pass it")


def prepare_one(label: str, tfds_name: str, data_dir: str, manual_dir: str) -> None:
  """download_and_prepare one dataset into `data_dir` as array_record."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    logging.info(f"{label}: {tfds_name} already prepared in {builder.data_dir}")
    return
  if label in MANUAL_INSTRUCTIONS and not manual_dir:   # label: already alias-resolved
    logging.warning(f"{label}: needs a manual download: {MANUAL_INSTRUCTIONS[label]} "
          f"(default manual_dir: {data_dir}/downloads/manual, or pass --manual_dir)")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  logging.info(f"{label}: preparing {tfds_name} in {data_dir} (array_record)")
  builder.download_and_prepare(download_config=config, file_format="array_record")
  logging.info(f"{label}: done, {builder.data_dir}")


def print_tasks() -> None:
  for t in TASKS.values():
    manual = " manual download" if t.manual_download else ""
    print(f"{t.name:22s} {t.group:12s} {t.tfds_name:52s}{manual}".rstrip())


def check_inputs(tasks: Sequence[str], data_dir: str,
                 manual_dir: str) -> tuple[list[tuple[str, str]], str]:
  """(targets, data dir) after every check that needs no TensorFlow; UserError otherwise."""
  if not tasks:
    raise ConfigError("name at least one task: a VTAB id (see --list), 'all' or a TFDS "
                      "name, e.g. python -m heat_jax.data.prepare dtd --data_dir=DIR")
  targets = resolve_targets(tasks)
  check_names(targets)
  data_dir, where = resolve_data_dir(data_dir)
  check_data_dir(data_dir, "--data_dir" if where == "config.data.data_dir" else where,
                 for_writing=True)
  check_manual_dir(manual_dir)
  if importlib.util.find_spec("tensorflow") is None:
    raise ConfigError(NO_TF_MESSAGE)
  return targets, data_dir


def _hide_gpus_from_tf() -> None:
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")   # keep accelerator memory for JAX


def main(argv: Sequence[str]) -> int:
  """absl main: `argv` is the program name followed by the task names."""
  if FLAGS.list:
    print_tasks()
    return 0
  targets, data_dir = check_inputs(list(argv[1:]), FLAGS.data_dir, FLAGS.manual_dir)
  _hide_gpus_from_tf()
  raise_open_file_limit()
  failed = []
  for label, tfds_name in targets:
    try:
      prepare_one(label, tfds_name, data_dir, FLAGS.manual_dir)
    except UserError as e:
      print(f"error: {label}: {e.one_line()}", file=sys.stderr)
      failed.append(label)
    except Exception as e:  # pylint: disable=broad-except
      print(f"error: {label}: preparing {tfds_name} failed: {_first_line(e)}", file=sys.stderr)
      failed.append(label)
  if failed:
    print(f"error: not prepared: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
  absl_cli.run(main, define_flags, argv)


if __name__ == "__main__":
  run()
