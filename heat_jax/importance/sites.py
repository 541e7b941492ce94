"""The attention layers ("sites") of a parameter tree, in head-gate row order.

Discovery and order come from `heat_jax.models.attention_paths` (the same order the
HEAT masks use): any subtree with `query`, `key`, `value` and `out` children, ordered
by the numbers in its path compared as integers (ViT `encoderblock_{i}`; Swin
`layers_{s}` then `blocks_{b}`), which is how both models number `head_gates` rows.
This module checks that each site has the per-head layout of
`heat_jax.models.layers.MultiHeadAttention`:

  query/key/value: kernel [hidden, heads, head_dim], bias [heads, head_dim] (optional)
  out:             kernel [heads, head_dim, hidden]
  Swin only:       relative_position_bias_table [positions, heads] (column h: head h)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from heat_jax.models.attention_paths import attention_paths, get_subtree
from heat_jax.models.registry import HeadLayout

PROJECTIONS = ("query", "key", "value")
BIAS_TABLE = "relative_position_bias_table"
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AttentionSite:
  """One attention layer: where it lives in the tree and how many heads it has."""

  path: Path
  num_heads: int
  head_dim: int
  has_bias: bool
  has_table: bool = False   # a relative-position bias table with one column per head

  def leaf(self, *names: str) -> Path:
    """Path of a parameter below this site, e.g. `site.leaf('query', 'kernel')`."""
    return self.path + tuple(names)

  @property
  def name(self) -> str:
    return "/".join(self.path)


def unwrap_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts `params` or a variables dict `{'params': params}`."""
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def _site_at(path: Path, node: Mapping[str, Any]) -> AttentionSite:
  """Validates the per-head shapes of the attention subtree `node`."""
  where = "/".join(path) or "<root>"
  kernels = [node[n].get("kernel") for n in PROJECTIONS]
  out = node["out"].get("kernel")
  if any(k is None or len(k.shape) != 3 for k in kernels) or out is None or len(out.shape) != 3:
    raise ValueError(f"{where}: attention kernels are not in the per-head layout "
                     "(query/key/value [hidden, heads, head_dim], out [heads, head_dim, "
                     "hidden])")
  _, heads, head_dim = kernels[0].shape
  if any(tuple(k.shape[1:]) != (heads, head_dim) for k in kernels):
    raise ValueError(f"{where}: query/key/value kernels disagree on [heads, head_dim]: "
                     f"{[tuple(k.shape) for k in kernels]}")
  if tuple(out.shape[:2]) != (heads, head_dim):
    raise ValueError(f"{where}: out kernel {tuple(out.shape)} does not start with "
                     f"[heads, head_dim] = {(heads, head_dim)}")
  biases = [node[n].get("bias") for n in PROJECTIONS]
  has_bias = all(b is not None for b in biases)
  if has_bias and any(tuple(b.shape) != (heads, head_dim) for b in biases):
    raise ValueError(f"{where}: query/key/value biases are not [heads, head_dim]")
  table = node.get(BIAS_TABLE)
  if table is not None and (len(table.shape) != 2 or table.shape[1] != heads):
    raise ValueError(f"{where}: {BIAS_TABLE} {tuple(table.shape)} is not [positions, "
                     f"heads={heads}]")
  return AttentionSite(tuple(path), int(heads), int(head_dim), has_bias, table is not None)


def find_attention_sites(params: Mapping[str, Any]) -> list[AttentionSite]:
  """Every attention subtree of `params`, ordered as the model's head-gate rows.

  Works on arrays or anything with a `.shape` (e.g. `jax.ShapeDtypeStruct`).
  """
  params = unwrap_params(params)
  return [_site_at(path, get_subtree(params, path)) for path in attention_paths(params)]


def check_sites(sites: list[AttentionSite], layout: HeadLayout) -> None:
  """Raises ValueError unless the sites match the model's head layout row by row."""
  found = tuple(s.num_heads for s in sites)
  if found != tuple(layout.heads_per_layer):
    names = ", ".join(f"{s.name}:{s.num_heads}" for s in sites)
    raise ValueError(f"attention layers found in the parameters (heads {found}) do not "
                     f"match the model's head layout {tuple(layout.heads_per_layer)}; "
                     f"found: {names or 'none'}")
