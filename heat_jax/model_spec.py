"""A JSON-able description of a built model, so artifacts can rebuild it.

`{'name', 'num_classes', 'overrides', 'extensions'}`: the registered model name, the
module fields that differ from its registered defaults, and the extension specs as
`{'kind', 'fields'}` (kinds from the extension registry, filled by the method files).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

import heat_jax.methods  # noqa: F401  (registers every method's extension kinds)
from heat_jax.models import create_model, extensions as ext_lib
from heat_jax.models.extensions import Extension


def spec_of(name: str, num_classes: int, overrides: dict[str, Any],
            extensions: Sequence[Extension] = ()) -> dict[str, Any]:
  """The spec of `create_model(name, num_classes, extensions=..., **overrides)`."""
  return {"name": name, "num_classes": int(num_classes), "overrides": dict(overrides),
          "extensions": [ext_lib.to_dict(e) for e in extensions]}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
  """Inverse of `spec_of`."""
  exts = tuple(ext_lib.from_dict(d) for d in spec.get("extensions", []))
  return create_model(spec["name"], spec["num_classes"], extensions=exts,
                      **spec["overrides"])
