"""Finding the attention layers ("sites") in a parameter tree, in head-gate row order.

An attention site is any subtree with `query`, `key`, `value` and `out` children in the
per-head layout of `heat_jax.models.layers.MultiHeadAttention`:

  query/key/value: kernel [hidden, heads, head_dim], bias [heads, head_dim]
  out:             kernel [heads, head_dim, hidden]

ViT keeps them at `Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0`, Swin at
`layers_{s}/blocks_{b}/attn`. Sites are ordered by the numbers in their path compared
as integers (a natural sort: `encoderblock_2` before `encoderblock_10`, Swin stage before
block), which is the order in which both models number the rows of `head_gates`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

from heat_jax.models.registry import HeadLayout

PROJECTIONS = ("query", "key", "value")
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AttentionSite:
  """One attention layer: where it lives in the tree and how many heads it has."""

  path: Path
  num_heads: int
  head_dim: int
  has_bias: bool

  def leaf(self, *names: str) -> Path:
    """Path of a parameter below this site, e.g. `site.leaf('query', 'kernel')`."""
    return self.path + tuple(names)

  @property
  def name(self) -> str:
    return "/".join(self.path)


def natural_key(path: Path) -> tuple:
  """Sort key that compares the digit runs of every path component as integers."""
  key = []
  for part in path:
    pieces = re.split(r"(\d+)", part)
    key.append(tuple(int(p) if i % 2 else p for i, p in enumerate(pieces)))
  return tuple(key)


def unwrap_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts `params` or a variables dict `{'params': params}`."""
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def _site_at(path: Path, node: Mapping[str, Any]) -> Optional[AttentionSite]:
  """The site described by `node`, or None if `node` is not an attention subtree."""
  if not all(isinstance(node.get(n), Mapping) for n in (*PROJECTIONS, "out")):
    return None
  kernels = [node[n].get("kernel") for n in PROJECTIONS]
  out = node["out"].get("kernel")
  if any(k is None or len(k.shape) != 3 for k in kernels) or out is None or len(out.shape) != 3:
    return None
  _, heads, head_dim = kernels[0].shape
  if any(tuple(k.shape[1:]) != (heads, head_dim) for k in kernels):
    raise ValueError(f"{'/'.join(path)}: query/key/value kernels disagree on "
                     f"[heads, head_dim]: {[tuple(k.shape) for k in kernels]}")
  if tuple(out.shape[:2]) != (heads, head_dim):
    raise ValueError(f"{'/'.join(path)}: out kernel {tuple(out.shape)} does not start with "
                     f"[heads, head_dim] = {(heads, head_dim)}")
  biases = [node[n].get("bias") for n in PROJECTIONS]
  has_bias = all(b is not None for b in biases)
  if has_bias and any(tuple(b.shape) != (heads, head_dim) for b in biases):
    raise ValueError(f"{'/'.join(path)}: query/key/value biases are not [heads, head_dim]")
  return AttentionSite(path, int(heads), int(head_dim), has_bias)


def find_attention_sites(params: Mapping[str, Any]) -> list[AttentionSite]:
  """Every attention subtree of `params`, ordered as the model's head-gate rows.

  Works on arrays or anything with a `.shape` (e.g. `jax.ShapeDtypeStruct`).
  """
  sites = []

  def visit(path: Path, node: Any) -> None:
    if not isinstance(node, Mapping):
      return
    site = _site_at(path, node)
    if site is not None:
      sites.append(site)
      return
    for name, child in node.items():
      visit(path + (str(name),), child)

  visit((), unwrap_params(params))
  sites.sort(key=lambda s: natural_key(s.path))
  return sites


def check_sites(sites: list[AttentionSite], layout: HeadLayout) -> None:
  """Raises ValueError unless the sites match the model's head layout row by row."""
  found = tuple(s.num_heads for s in sites)
  if found != tuple(layout.heads_per_layer):
    names = ", ".join(f"{s.name}:{s.num_heads}" for s in sites)
    raise ValueError(f"attention layers found in the parameters (heads {found}) do not "
                     f"match the model's head layout {tuple(layout.heads_per_layer)}; "
                     f"found: {names or 'none'}")
