"""Locating the per-head attention modules in a parameter tree.

An attention module is any subtree with `query`, `key`, `value` and `out` children
(heat_jax.models.layers.MultiHeadAttention). Their order is the order of the rows of
`head_gates`: the numeric indices in the path, compared left to right (ViT:
`encoderblock_{i}`; Swin: `layers_{s}` then `blocks_{b}`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

ATTENTION_CHILDREN = ("query", "key", "value", "out")


def _numeric_key(path: tuple[str, ...]) -> tuple[int, ...]:
  return tuple(int(n) for part in path for n in re.findall(r"\d+", part))


def attention_paths(params: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """Paths (tuples of keys) of every attention module, in head_gates row order."""
  found: list[tuple[str, ...]] = []

  def visit(node: Any, path: tuple[str, ...]) -> None:
    if not isinstance(node, Mapping):
      return
    if all(c in node for c in ATTENTION_CHILDREN):
      found.append(path)
      return
    for key, child in node.items():
      visit(child, path + (str(key),))

  visit(params, ())
  return sorted(found, key=_numeric_key)


def get_subtree(params: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  node = params
  for key in path:
    node = node[key]
  return node
