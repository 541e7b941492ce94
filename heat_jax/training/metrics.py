"""Metric logging: `workdir/metrics.jsonl` always, TensorBoard when available."""

from __future__ import annotations

import json
import os
from typing import Any


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
    self._tb = _tensorboard_writer(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    self._file.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _tensorboard_writer(logdir: str):
  """A tensorboardX / torch SummaryWriter if one is installed, else None."""
  if os.environ.get("HEAT_JAX_NO_TENSORBOARD"):
    return None
  try:
    from tensorboardX import SummaryWriter  # type: ignore
  except ImportError:
    return None
  return SummaryWriter(logdir)
