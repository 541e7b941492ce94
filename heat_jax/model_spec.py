"""A JSON-able description of a built model, so artifacts can rebuild it."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from heat_jax.models import create_model
from heat_jax.models.layers import AdapterSpec, LoraSpec
from heat_jax.models.vit import VptSpec

_SPECS = {"lora": LoraSpec, "adapter": AdapterSpec, "vpt": VptSpec}


def spec_of(name: str, num_classes: int, overrides: dict[str, Any]) -> dict[str, Any]:
  """{'name', 'num_classes', 'overrides'} with dataclass specs turned into dicts."""
  out = {}
  for k, v in overrides.items():
    if dataclasses.is_dataclass(v):
      v = {kk: list(vv) if isinstance(vv, tuple) else vv
           for kk, vv in dataclasses.asdict(v).items()}
    out[k] = v
  return {"name": name, "num_classes": int(num_classes), "overrides": out}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
  """Inverse of `spec_of`."""
  overrides = {}
  for k, v in spec["overrides"].items():
    if k in _SPECS and isinstance(v, dict):
      v = _SPECS[k](**{kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()})
    overrides[k] = v
  return create_model(spec["name"], spec["num_classes"], **overrides)
