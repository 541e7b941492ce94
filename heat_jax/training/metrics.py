"""Metric logging: `workdir/metrics.jsonl` always, TensorBoard under `workdir/tb` too.

TensorBoard event files are written whenever tensorboardX is installed
(`pip install -e ".[tb]"`), whatever the config; `HEAT_JAX_NO_TENSORBOARD=1` turns them
off. Both get the same scalars: the numeric values of each `write`, at its step.

On a bucket workdir (gs://) objects cannot be appended to: metrics.jsonl is kept in
memory and uploaded whole at each `flush` (the engine flushes at every checkpoint) and
on `close`. tensorboardX writes gs:// event files itself when google-cloud-storage is
installed; without it TensorBoard is skipped there, with a warning.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
import time
from typing import Any, Optional

from absl import logging

from heat_jax.io_utils import as_path, is_remote, storage_error, write_text

TB_SUBDIR = "tb"
DISABLE_ENV = "HEAT_JAX_NO_TENSORBOARD"


def _step_of(line: str) -> float:
  """The step of a metrics line; inf for a blank or partial one (never kept on resume)."""
  try:
    return json.loads(line).get("step", 0)
  except (ValueError, AttributeError):
    return float("inf")


class MetricWriter:
  """Appends {'step': s, **metrics} lines; on resume drops lines past `resume_step`."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    keep = []
    if as_path(self.path).exists():
      keep = [line + "\n" for line in as_path(self.path).read_text().splitlines()
              if _step_of(line) <= resume_step]
    self._lines: Optional[list[str]] = None
    if is_remote(self.path):
      self._lines = keep
      self._file = None
    else:
      with open(self.path, "w") as f:
        f.writelines(keep)
      self._file = open(self.path, "a")
    self._tb = tensorboard_writer(os.path.join(workdir, TB_SUBDIR), resume_step=resume_step)

  @property
  def tensorboard(self) -> bool:
    """Whether event files are being written."""
    return self._tb is not None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    line = json.dumps({"step": int(step), **metrics}) + "\n"
    if self._lines is not None:
      self._lines.append(line)
    else:
      try:
        self._file.write(line)
        self._file.flush()
      except OSError as e:   # e.g. a full disk: one line (a partial line is dropped on resume)
        raise storage_error(e, self.path) or e from None
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, numbers.Real):
          self._tb.add_scalar(k, float(v), int(step))

  def flush(self) -> None:
    """Makes the lines so far visible in the file (a no-op locally: lines are flushed)."""
    if self._lines is not None:
      write_text(self.path, "".join(self._lines))
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._lines is not None:
      self.flush()
    else:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def tensorboard_enabled() -> bool:
  """The rule: tensorboardX importable and `HEAT_JAX_NO_TENSORBOARD` unset, empty or 0."""
  if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
    return False
  try:
    import tensorboardX  # noqa: F401  (the optional [tb] extra)
  except ImportError:
    return False
  return True


def tensorboard_writer(logdir: str, *, resume_step: int = 0):
  """A tensorboardX SummaryWriter on `logdir`, or None when TensorBoard is off.

  TensorBoard hides the events past `resume_step` that an earlier run in the same
  workdir wrote (`purge_step`), as metrics.jsonl drops its lines past it.
  """
  if not tensorboard_enabled():
    return None
  if is_remote(logdir) and not _has_gcs_client():
    logging.warning(f"no TensorBoard events in {logdir}: tensorboardX writes to buckets "
                    "with google-cloud-storage (pip install google-cloud-storage)")
    return None
  from tensorboardX import SummaryWriter
  # File names carry the time in whole seconds only: a second writer within the same
  # second would overwrite the first file. The suffix keeps names unique and in order.
  return SummaryWriter(logdir, purge_step=resume_step + 1,
                       filename_suffix=f".{time.time_ns()}")


def read_metric(workdir: str, key: str) -> list[float]:
  """The logged values of one metric (e.g. 'train/loss') from `<workdir>/metrics.jsonl`,
  in step order."""
  text = as_path(os.path.join(workdir, "metrics.jsonl")).read_text()
  lines = [json.loads(line) for line in text.splitlines() if line.strip()]
  return [line[key] for line in lines if key in line]


class NullWriter:
  """A MetricWriter that writes nothing (the non-primary processes of a multi-process run)."""

  tensorboard = False

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    del step, metrics

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _has_gcs_client() -> bool:
  try:
    return importlib.util.find_spec("google.cloud.storage") is not None
  except ModuleNotFoundError:   # no `google` package at all
    return False

