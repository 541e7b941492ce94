"""The converters and exporters of the checkpoint formats, by family name.

Each checkpoint module (`vit_npz`, `timm_vit`, `swin_timm`, ...) registers here, at
import, the converter of its file format (file -> canonical arrays) and its exporter
(plain parameters -> a file other libraries load), under the name of the model
`Family` it serves (`heat_jax.models.model_info(name).name`). This module imports no
format module, so the format modules import it without a cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from heat_jax.errors import CheckpointError

# family -> fn(path, *, template, model, image_hw, interpolation) -> (flat arrays, facts)
Converter = Callable[..., tuple[dict[str, np.ndarray], dict]]
_CONVERTERS: dict[str, Converter] = {}


@dataclasses.dataclass(frozen=True)
class Exporter:
  """How a family's plain parameters become a file other libraries load.

  `write(path, flat_params)` takes '/'-joined canonical names (extensions merged, the
  classifier included); `filename` is the name a run gives the file in its workdir.
  """

  filename: str
  write: Callable[[Any, dict[str, np.ndarray]], None]
  layout: str   # what reads it, for messages and the README


_EXPORTERS: dict[str, Exporter] = {}


def register_converter(family: str, fn: Converter) -> None:
  """Registers the file -> canonical-arrays converter of a model family."""
  _CONVERTERS[family] = fn


def register_exporter(family: str, exporter_: Exporter) -> None:
  """Registers the canonical-params -> file exporter of a model family."""
  _EXPORTERS[family] = exporter_


def converter(family: str) -> Converter:
  if family not in _CONVERTERS:
    raise CheckpointError(f"no checkpoint converter for model family {family!r}")
  return _CONVERTERS[family]


def exporter(family: str) -> Exporter:
  if family not in _EXPORTERS:
    raise CheckpointError(f"no merged-checkpoint exporter for model family {family!r}")
  return _EXPORTERS[family]


def model_format(model: Any) -> str:
  """The family name a built module's checkpoints use (`checkpoint_format`)."""
  return getattr(model, "checkpoint_format", "") or getattr(model, "family", "vit")
