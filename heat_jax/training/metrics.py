"""Metric logging: `workdir/metrics.jsonl` always, TensorBoard under `workdir/tb` too.

TensorBoard event files are written whenever tensorboardX is installed
(`pip install -e ".[tb]"`), whatever the config; `HEAT_JAX_NO_TENSORBOARD=1` turns them
off. Both get the same scalars: the numeric values of each `write`, at its step.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from typing import Any

TB_SUBDIR = "tb"
DISABLE_ENV = "HEAT_JAX_NO_TENSORBOARD"


class MetricWriter:
  """Appends {'step': s, **metrics} lines; on resume drops lines past `resume_step`."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):
      with open(self.path) as f:
        keep = [line for line in f if line.strip() and
                json.loads(line).get("step", 0) <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(keep)
    self._file = open(self.path, "a")
    self._tb = tensorboard_writer(os.path.join(workdir, TB_SUBDIR), resume_step=resume_step)

  @property
  def tensorboard(self) -> bool:
    """Whether event files are being written."""
    return self._tb is not None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    self._file.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, numbers.Real):
          self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
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
  from tensorboardX import SummaryWriter
  # File names carry the time in whole seconds only: a second writer within the same
  # second would overwrite the first file. The suffix keeps names unique and in order.
  return SummaryWriter(logdir, purge_step=resume_step + 1,
                       filename_suffix=f".{time.time_ns()}")


class NullWriter:
  """A MetricWriter that writes nothing (the non-primary processes of a multi-process run)."""

  tensorboard = False

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    del step, metrics

  def close(self) -> None:
    pass
