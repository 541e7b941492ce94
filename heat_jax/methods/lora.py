"""LoRA on attention projections (q and v by default); `b` starts at zero.

The update of projection W (per-head layout [in, heads, head_dim]) is
`(alpha / rank) * a @ b` with a [in, rank], b [rank, heads, head_dim], applied to the
projection's output in the factored form. `head_mask` (Heart-LoRA) multiplies each
head's slice of the update by a fixed 0/1 factor, so a masked head gets no update
whatever values `a` and `b` hold.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models.attention_paths import attention_paths, get_subtree
from heat_jax.models.extensions import Extension, Site, register_extension
from heat_jax.training import partition

Array = jax.Array
PROJECTIONS = ("query", "key", "value", "out")


class LoraDelta(nn.Module):
  """Low-rank update in the per-head layout: a [in, rank], b [rank, heads, head_dim].

  `b` is zero-initialised so the model is unchanged at step 0. Head h owns b[:, h, :].
  """

  features: tuple[int, ...]
  rank: int
  scale: float
  dropout: float = 0.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    a = self.param("a", nn.initializers.he_uniform(), (x.shape[-1], self.rank),
                   self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (self.rank, *self.features), self.param_dtype)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, name="dropout")(x, deterministic=deterministic)
    h = jnp.einsum("...d,dr->...r", x, a.astype(x.dtype))
    # Contract the rank axis with b's first axis; keep b's remaining (head) axes.
    delta = jnp.tensordot(h, b.astype(x.dtype), axes=((h.ndim - 1,), (0,)))
    return delta * self.scale


@register_extension
@dataclasses.dataclass(frozen=True)
class LoraSpec(Extension):
  """LoRA on the attention projections named in `targets`.

  head_mask: optional [layers][heads] 0/1 (Heart-LoRA); None = every head.
  """

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("query", "value")
  head_mask: Optional[tuple[tuple[bool, ...], ...]] = None

  kind = "lora"
  param_names = ("lora_query", "lora_key", "lora_value")
  mergeable = True

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def project(self, host: nn.Module, site: Site, name: str, x: Array, y: Array, *,
              shared: Any, deterministic: bool) -> Array:
    if name not in self.targets:
      return y
    delta = LoraDelta((site.num_heads, site.head_dim), self.rank, self.scale, self.dropout,
                      host.param_dtype, name=f"lora_{name}")(x, deterministic)
    if self.head_mask is not None:
      keep = jnp.asarray(self.head_mask[site.layer][:site.num_heads], delta.dtype)
      delta = delta * keep[:, None]
    return y + delta.astype(y.dtype)

  def merge(self, params: dict) -> dict:
    """Folds `scale * a @ b` (per-head masked) into each target kernel."""
    flat = {k: np.array(v) for k, v in partition.flatten(params).items()}
    for row, path in enumerate(attention_paths(params)):
      node = get_subtree(params, path)
      prefix = "/".join(path)
      for target in self.targets:
        lora = node.get(f"lora_{target}")
        if lora is None:
          continue
        delta = np.tensordot(np.asarray(lora["a"], np.float32),
                             np.asarray(lora["b"], np.float32), axes=(1, 0)) * self.scale
        if self.head_mask is not None:
          heads = delta.shape[1]
          delta = delta * np.asarray(self.head_mask[row][:heads], np.float32)[None, :, None]
        kernel = f"{prefix}/{target}/kernel"
        flat[kernel] = (flat[kernel].astype(np.float32) + delta).astype(flat[kernel].dtype)
    return partition.unflatten({k: v for k, v in flat.items() if not is_lora(k)})


def lora_spec(lora: ml_collections.ConfigDict,
              head_mask: Optional[np.ndarray] = None) -> LoraSpec:
  """LoraSpec from `config.lora`; `targets` is a comma list or a regex over
  query/key/value; `head_mask` a bool [layers, heads] array (Heart-LoRA)."""
  text = str(lora.targets).strip()
  names = [t.strip() for t in text.split(",") if t.strip()]
  if not all(n in PROJECTIONS for n in names):
    try:
      pattern = re.compile(text)
    except re.error as e:
      raise ConfigError(f"config.lora.targets={text!r} is neither a comma list of "
                        f"{PROJECTIONS[:3]} nor a valid regex ({e})") from None
    names = [p for p in PROJECTIONS if pattern.fullmatch(p)]
  if "out" in names:
    raise ConfigError("config.lora.targets: LoRA on 'out' is not supported; use query, "
                      "key and/or value")
  if not names:
    raise ConfigError(f"config.lora.targets={text!r} matches no projection; use e.g. "
                      "'query,value'")
  if lora.rank < 1:
    raise ConfigError(f"config.lora.rank must be >= 1, got {lora.rank}")
  mask = None if head_mask is None else tuple(tuple(bool(v) for v in row)
                                              for row in np.asarray(head_mask, bool))
  return LoraSpec(rank=int(lora.rank), alpha=float(lora.alpha), dropout=float(lora.dropout),
                  targets=tuple(names), head_mask=mask)


def is_lora(path: str) -> bool:
  return any(part.startswith("lora_") for part in path.split("/"))


@register_method
class Lora(Method):
  name = "lora"
  rank_field = "lora.rank"

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    c = ml_collections.ConfigDict()
    c.rank = 8
    c.alpha = 8.0
    c.dropout = 0.0
    c.targets = "query,value"           # comma list or regex over query/key/value
    return {"lora": c}

  def extensions(self) -> tuple[Extension, ...]:
    return (lora_spec(self.config.lora),)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: is_lora(k))
    return self.with_head(ctx.params, mask)
