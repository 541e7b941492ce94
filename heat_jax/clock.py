"""The run's stopwatch: wall time split into training and side work; saved with the
checkpoint (`state()` goes into its meta, `from_meta` takes it back on resume)."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional


class Clock:
  """Run time split into training and side work (evaluation, checkpoints).

  Steps are dispatched asynchronously, so throughput is measured between
  synchronisation points only (metric fetches, evaluations, saves).
  """

  def __init__(self, elapsed_before: float = 0.0, train_before: float = 0.0):
    self.start = time.time()
    self.elapsed_before, self.train_before = elapsed_before, train_before
    self.side = 0.0
    self.sync_time, self.sync_steps, self.compiled = time.time(), 0, False

  @classmethod
  def from_meta(cls, meta: dict) -> "Clock":
    """The clock of a resumed run (zero for a fresh one)."""
    return cls(float(meta.get("elapsed_s", 0.0)), float(meta.get("train_time_s", 0.0)))

  def state(self) -> dict[str, float]:
    return {"elapsed_s": self.elapsed(), "train_time_s": self.train_time()}

  def elapsed(self) -> float:
    return self.elapsed_before + time.time() - self.start

  def train_time(self) -> float:
    return self.train_before + time.time() - self.start - self.side

  def side_work(self, fn: Callable[..., Any], *args: Any) -> Any:
    tic = time.time()
    out = fn(*args)
    self.side += time.time() - tic
    self.sync_time, self.sync_steps = time.time(), 0
    return out

  def images_per_s(self, batch_size: int) -> Optional[float]:
    """Throughput since the last synchronisation (None for the compiling first one)."""
    now = time.time()
    rate = self.sync_steps * batch_size / max(now - self.sync_time, 1e-9)
    first = not self.compiled
    self.compiled, self.sync_time, self.sync_steps = True, now, 0
    return None if first else rate
