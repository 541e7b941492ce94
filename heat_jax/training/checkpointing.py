"""Resumable train-state checkpoints (orbax-checkpoint), behind a thin interface.

Only the trainable tree, the model state (e.g. batch statistics), the optimizer state,
the step and the rng are saved (the frozen backbone is the pretrained file), plus a
JSON `meta` item (config fingerprint, evaluation history, elapsed time, the method's
resume state).

In a multi-process run every process calls `save` / `restore` at the same points:
Orbax coordinates them (process 0 finalises the step directory) and restores the
arrays with the shardings of `like` (replicated over the global mesh). The directory
must be one that every host sees.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from heat_jax.io_utils import is_remote


class TrainCheckpointer:
  """Periodic saves and restore-latest for one workdir."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    # orbax takes bucket paths (gs://) as they are; abspath would mangle them.
    self.directory = os.fspath(directory) if is_remote(directory) else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore_meta(self, step: int) -> dict:
    """The JSON `meta` item of a checkpoint, without reading its arrays."""
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def close(self) -> None:
    self._manager.close()
