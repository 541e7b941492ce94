"""Preemption: SIGTERM ends a run with a checkpoint at a step every process agrees on.

A preempted TPU VM or spot instance gets SIGTERM some seconds before it goes away (on a
multi-host run every host gets it, at slightly different steps). `Guard` (installed
by `experiment.run` around the run) turns SIGTERM into a request:

  * before the train loop starts (data, weights, importance scoring): `Preempted` is
    raised at once; nothing new would be lost;
  * in the train loop: the current step finishes; `should_stop(step)` answers True at
    the same step in every process, the loop saves a checkpoint there and raises
    `Preempted`; run.py exits with `EXIT_CODE` (75, EX_TEMPFAIL: "try again"), and the
    same command resumes from that checkpoint, bit-equal to an uninterrupted run;
  * after the loop (final evaluation, exports): the run just finishes.

Agreement across processes (big_vision asks JAX's preemption sync point, which needs
the distributed runtime's preemption service; this works on any backend): every step
each process puts its "stop requested" flag into a max over all processes, a tiny
collective dispatched after the step and read one step later, so it never stalls the
step pipeline. A request seen by any process at step n stops all of them after step
n + 1. One process needs no collective and stops after the current step.

`deferred()` wraps a checkpoint save: SIGTERM and SIGINT that arrive during it are held
until the save is committed (a Ctrl-C then interrupts right after it; a SIGTERM becomes
a stop request), so no signal can leave a half-written checkpoint as the latest one.
Signal handlers are only installed from the main thread and are restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator, Optional

# sysexits.h EX_TEMPFAIL: a temporary failure, the same command should be retried.
EXIT_CODE = getattr(os, "EX_TEMPFAIL", 75)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on SIGTERM; rerunning the same command resumes it."""

  exit_code = EXIT_CODE

  def __init__(self, step: Optional[int] = None, workdir: str = ""):
    self.step, self.workdir = step, workdir
    where = (f"checkpoint saved at step {step}" if step is not None
             else "stopped before training")
    super().__init__(f"preempted (SIGTERM): {where}; rerun the same command to resume "
                     f"(exit code {EXIT_CODE})")

  def one_line(self) -> str:
    return " ".join(str(self).split())


_ACTIVE: Optional["Guard"] = None


class Guard:
  """SIGTERM -> a stop request that the train loop honours (see the module docstring)."""

  def __init__(self):
    self.requested = False
    self.armed = False        # the train loop is running: requests wait for a step end
    self._deferring = False
    self._held: list[int] = []
    self._previous: dict[int, Any] = {}
    self._pending = None      # last step's all-process max (multi-process runs)
    self._reduce = None
    self._outer: Optional[Guard] = None

  # -------------------------------------------------------------------- install
  def __enter__(self) -> "Guard":
    global _ACTIVE
    self._outer = _ACTIVE
    if threading.current_thread() is threading.main_thread():
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
      _ACTIVE = self
    return self

  def __exit__(self, *exc: Any) -> None:
    global _ACTIVE
    for signum, handler in self._previous.items():
      # None: installed outside Python (e.g. by a runtime); the default is the best guess.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()
    if _ACTIVE is self:
      _ACTIVE = self._outer

  def _on_signal(self, signum: int, frame: Any) -> None:
    del frame
    if self._deferring:
      self._held.append(signum)
      return
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    if not self.armed:
      raise Preempted()

  # -------------------------------------------------------------------- the loop
  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step`; the same answer in every process.

    Every process must call it after the same steps (it is a collective when there
    are several processes).
    """
    del step
    self.armed = True
    import jax
    if jax.process_count() == 1:
      return self.requested
    previous, self._pending = self._pending, self._all_max(self.requested)
    return previous is not None and bool(previous)

  def _all_max(self, flag: bool) -> Any:
    """Dispatches max over processes of `flag`; returns the (not yet read) result."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from heat_jax import distributed
    if self._reduce is None:
      mesh = distributed.make_mesh()
      self._sharding = NamedSharding(mesh, P(distributed.DATA_AXIS))
      self._reduce = jax.jit(lambda x: x.max(), out_shardings=NamedSharding(mesh, P()))
    local = np.full((jax.local_device_count(),), int(flag), np.int32)
    return self._reduce(jax.make_array_from_process_local_data(self._sharding, local))

  @contextlib.contextmanager
  def deferred(self) -> Iterator[None]:
    """Holds SIGTERM / SIGINT until the block (a checkpoint save) has finished."""
    if not self._previous:   # not installed (not the main thread)
      yield
      return
    previous_int = signal.signal(signal.SIGINT, self._on_signal)
    self._deferring, self._held = True, []
    try:
      yield
    finally:
      self._deferring = False
      signal.signal(signal.SIGINT, previous_int)
      held, self._held = self._held, []
    if signal.SIGTERM in held:
      self.requested = True
    if signal.SIGINT in held and not self.requested:
      raise KeyboardInterrupt


def watch() -> Any:
  """`should_stop(step)` of the installed guard (always False without one); arms it."""
  guard = _ACTIVE
  if guard is None:
    return lambda step: False
  guard.armed = True
  return guard.should_stop


def deferred() -> Any:
  """The installed guard's `deferred()` (a no-op context without one)."""
  return _ACTIVE.deferred() if _ACTIVE is not None else contextlib.nullcontext()
