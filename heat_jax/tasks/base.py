"""The `TaskKind` base and its registry (see `heat_jax.tasks`)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import numpy as np

from heat_jax.errors import ConfigError

_KINDS: dict[str, type["TaskKind"]] = {}


class TaskKind:
  """What the model predicts: output size, training loss, evaluation sums and metrics."""

  name: ClassVar[str] = "base"
  metric_names: ClassVar[tuple[str, ...]] = ()   # the first is the headline metric

  def __init__(self, config: Any = None):
    self.config = config   # the run's config (a kind may read its own block)

  def validate(self) -> None:
    """Cheap checks of the kind's options (ConfigError)."""

  def extensions(self) -> tuple:
    """Model extensions the kind adds after the method's (e.g. a dense decoder head)."""
    return ()

  def eval_predict(self, predict_fn: Any) -> Any:
    """The forward evaluation uses (e.g. sliding-window inference around it)."""
    return predict_fn

  def num_outputs(self, data_task: Any) -> int:
    raise NotImplementedError

  def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
    raise NotImplementedError

  def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    raise NotImplementedError

  def metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    raise NotImplementedError


def register_task_kind(cls: type[TaskKind]) -> type[TaskKind]:
  """Class decorator: makes `cls` available as `config.task_kind == cls.name`."""
  if cls.name in _KINDS:
    raise ValueError(f"task kind {cls.name!r} registered twice")
  _KINDS[cls.name] = cls
  return cls


def available_task_kinds() -> list[str]:
  return sorted(_KINDS)


def get_task_kind(name: str, config: Any = None) -> TaskKind:
  if name not in _KINDS:
    raise ConfigError(f"config.task_kind={name!r} is not one of {available_task_kinds()}")
  return _KINDS[name](config)
