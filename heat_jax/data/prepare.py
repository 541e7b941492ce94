"""Prepare TFDS datasets as array_record so that training reads them without TensorFlow.

  python -m heat_jax.data.prepare dtd svhn --data_dir=DIR
  python -m heat_jax.data.prepare all --data_dir=gs://bucket/tfds
  python -m heat_jax.data.prepare resisc45 --data_dir=DIR --manual_dir=DIR_WITH_THE_RAR
  python -m heat_jax.data.prepare --list

Tasks are VTAB ids (`all` = the 19 tasks) or raw TFDS names (`mnist:3.*.*`). Official TFDS
builders need TensorFlow to prepare (once): `pip install -e ".[tf]"`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Optional, Sequence

from heat_jax.data.tfds_source import _first_line, raise_open_file_limit, resolve_data_dir
from heat_jax.data.vtab_tasks import ALIASES, MANUAL_INSTRUCTIONS, TASK_NAMES, TASKS
from heat_jax.errors import UserError

NO_TF_MESSAGE = ('preparing TFDS datasets needs TensorFlow, which is not installed: run '
                 'pip install -e ".[tf]" (tensorflow-cpu), then run this command again')


def resolve_targets(names: Sequence[str]) -> list[tuple[str, str]]:
  """[(label, tfds name)] for VTAB ids, `all` or raw TFDS names, each TFDS name once."""
  targets: dict[str, str] = {}
  for name in names:
    for item in (TASK_NAMES if name == "all" else [ALIASES.get(name, name)]):
      tfds_name = TASKS[item].tfds_name if item in TASKS else item
      targets.setdefault(tfds_name, item)
  return [(label, tfds_name) for tfds_name, label in targets.items()]


def _hide_gpus_from_tf() -> None:
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")   # keep accelerator memory for JAX


def prepare_one(label: str, tfds_name: str, data_dir: str, manual_dir: str) -> None:
  """download_and_prepare one dataset into `data_dir` as array_record."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    print(f"{label}: {tfds_name} already prepared in {builder.data_dir}")
    return
  if label in MANUAL_INSTRUCTIONS and not manual_dir:   # label: already alias-resolved
    print(f"{label}: needs a manual download: {MANUAL_INSTRUCTIONS[label]} "
          f"(default manual_dir: {data_dir}/downloads/manual, or pass --manual_dir)")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  print(f"{label}: preparing {tfds_name} in {data_dir} (array_record)")
  builder.download_and_prepare(download_config=config, file_format="array_record")
  print(f"{label}: done, {builder.data_dir}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m heat_jax.data.prepare",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("tasks", nargs="*", help="VTAB task ids, 'all', or TFDS names")
  parser.add_argument("--data_dir", default="", help="default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets")
  parser.add_argument("--manual_dir", default="", help="manual downloads (resisc45, "
                      "diabetic_retinopathy); default <data_dir>/downloads/manual")
  parser.add_argument("--list", action="store_true", help="print the VTAB tasks and exit")
  args = parser.parse_args(argv)
  if args.list:
    for t in TASKS.values():
      manual = " manual download" if t.manual_download else ""
      print(f"{t.name:22s} {t.group:12s} {t.tfds_name:52s}{manual}".rstrip())
    return 0
  if not args.tasks:
    parser.print_usage(sys.stderr)
    print("error: name at least one task (or 'all')", file=sys.stderr)
    return 2
  targets = resolve_targets(args.tasks)
  if importlib.util.find_spec("tensorflow") is None:
    print(f"error: {NO_TF_MESSAGE}", file=sys.stderr)
    return 2
  data_dir, _ = resolve_data_dir(args.data_dir)
  _hide_gpus_from_tf()
  raise_open_file_limit()
  failed = []
  for label, tfds_name in targets:
    try:
      prepare_one(label, tfds_name, data_dir, args.manual_dir)
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


if __name__ == "__main__":
  sys.exit(main())
