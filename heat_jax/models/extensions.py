"""Extension points of the backbones: a method changes a model from its own file.

A backbone (ViT, Swin) takes `extensions`, a tuple of frozen (hashable) `Extension`
specs, and calls each of them at fixed points of its forward pass:

  shared(host)                       once, at the top of the model: values (usually
                                     parameters) every other hook of this extension sees
  project(host, site, name, x, y)    after each attention projection `name` in
                                     query/key/value: returns y [..., heads, head_dim]
  branch(host, site, part, x, y)     around a sub-block, `part` 'attention' or 'mlp':
                                     x is the sub-block's residual input, y its output
                                     before the residual add; returns the new y
  tokens(host, site, x, start)       before each block (ViT only): may insert or replace
                                     extra tokens at index `start` (after the class token)
  features(host, tokens, train)      may provide multi-scale feature maps (finest
                                     first, e.g. HST's side stages) that a dense head
                                     reads as `tokens.features`; None = provides none
  head(host, features, tokens, num_classes, train)
                                     may replace the classifier: returns logits or None;
                                     `tokens` holds every block's output and the input
                                     images (side networks read both)

`host` is the calling linen module: an extension creates its submodules and parameters
inside it, under names of its own (`param_names`), so pretrained names never change.
Extensions are registered by `kind` so that a model spec round-trips through JSON
(`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax

Array = jax.Array

_EXTENSIONS: dict[str, type["Extension"]] = {}


@dataclasses.dataclass(frozen=True)
class Site:
  """Where a block-level hook is called: block `layer` (0-based over all blocks)."""

  layer: int
  num_heads: int
  head_dim: int
  width: int
  family: str
  num_layers: int
  stage: int = 0


@dataclasses.dataclass(frozen=True)
class Tokens:
  """Every block's output tokens and how to read them (for `Extension.head`).

  ViT: blocks[i] is [B, T, D] laid out as [class token (num_prefix), extension tokens,
  patches]; the patches are the last grid[0] * grid[1] tokens. Swin: blocks[i] is
  [B, h_i * w_i, C_i] (no prefix; the grid changes between stages: `grids[i]`).
  `images` is the model's input [B, H, W, 3] in the compute dtype (a side network
  with a pixel stem, e.g. HST, reads it). `features`: the multi-scale maps
  [B, h_i, w_i, C_i] (finest first) an extension's `features` hook provided, else None.
  """

  blocks: tuple[Array, ...]
  num_prefix: int
  grids: tuple[tuple[int, int], ...]
  images: Optional[Array] = None
  features: Optional[tuple[Array, ...]] = None


class Extension:
  """Base class of extension specs (subclasses are frozen dataclasses).

  Class attributes:
    kind: registry name (unique).
    param_names: names of the parameter subtrees it adds; never read from a
      pretrained checkpoint, always freshly initialised.
    families: model families it supports ('vit', 'swin').
    mergeable: whether `merge` can fold it into plain backbone weights.
  """

  kind: ClassVar[str] = ""
  param_names: ClassVar[tuple[str, ...]] = ()
  families: ClassVar[tuple[str, ...]] = ("vit", "swin")
  mergeable: ClassVar[bool] = False

  def shared(self, host: nn.Module) -> Any:
    return None

  def project(self, host: nn.Module, site: Site, name: str, x: Array, y: Array, *,
              shared: Any, deterministic: bool) -> Array:
    return y

  def branch(self, host: nn.Module, site: Site, part: str, x: Array, y: Array, *,
             shared: Any, deterministic: bool) -> Array:
    return y

  def tokens(self, host: nn.Module, site: Site, x: Array, start: int, *, shared: Any,
             deterministic: bool) -> Array:
    return x

  def features(self, host: nn.Module, tokens: Tokens, *, shared: Any,
               train: bool) -> Optional[Sequence[Array]]:
    return None

  def head(self, host: nn.Module, features: Array, tokens: Tokens, num_classes: int, *,
           shared: Any, train: bool) -> Optional[Array]:
    return None

  def merge(self, params: dict) -> dict:
    """`params` with this extension folded into the plain weights and its subtrees gone."""
    raise NotImplementedError(f"extension {self.kind!r} cannot be merged")


class Hooks:
  """The extensions of one forward pass with their shared values; passed down the model."""

  def __init__(self, extensions: Sequence[Extension], shared: Sequence[Any]):
    self.extensions = tuple(extensions)
    self.shared = tuple(shared)

  @classmethod
  def build(cls, host: nn.Module, extensions: Sequence[Extension], family: str) -> "Hooks":
    """Validates `extensions` for `family` and calls every `shared` hook in `host`."""
    kinds = [e.kind for e in extensions]
    if len(set(kinds)) != len(kinds):
      raise ValueError(f"extensions {kinds} repeat a kind")
    for e in extensions:
      if not isinstance(e, Extension):
        raise TypeError(f"extensions must be Extension specs, got {type(e).__name__}")
      if family not in e.families:
        raise ValueError(f"extension {e.kind!r} does not support {family} models "
                         f"(supported: {', '.join(e.families)})")
    return cls(extensions, [e.shared(host) for e in extensions])

  def project(self, host: nn.Module, site: Site, name: str, x: Array, y: Array,
              deterministic: bool) -> Array:
    for e, s in zip(self.extensions, self.shared):
      y = e.project(host, site, name, x, y, shared=s, deterministic=deterministic)
    return y

  def branch(self, host: nn.Module, site: Site, part: str, x: Array, y: Array,
             deterministic: bool) -> Array:
    for e, s in zip(self.extensions, self.shared):
      y = e.branch(host, site, part, x, y, shared=s, deterministic=deterministic)
    return y

  def tokens(self, host: nn.Module, site: Site, x: Array, start: int,
             deterministic: bool) -> Array:
    for e, s in zip(self.extensions, self.shared):
      x = e.tokens(host, site, x, start, shared=s, deterministic=deterministic)
    return x

  def head(self, host: nn.Module, features: Array, tokens: Tokens, num_classes: int,
           train: bool) -> Optional[Array]:
    maps = [m for e, s in zip(self.extensions, self.shared)
            if (m := e.features(host, tokens, shared=s, train=train)) is not None]
    if len(maps) > 1:
      raise ValueError("two extensions provide multi-scale features")
    if maps:
      tokens = dataclasses.replace(tokens, features=tuple(maps[0]))
    out = None
    for e, s in zip(self.extensions, self.shared):
      logits = e.head(host, features, tokens, num_classes, shared=s, train=train)
      if logits is not None:
        if out is not None:
          raise ValueError("two extensions replace the classifier")
        out = logits
    return out


# ----------------------------------------------------------------------------- registry


def register_extension(cls: type[Extension]) -> type[Extension]:
  """Class decorator: makes `cls` known by its `kind` (model specs, fresh names)."""
  if not cls.kind:
    raise ValueError(f"{cls.__name__} needs a `kind`")
  if _EXTENSIONS.get(cls.kind, cls) is not cls:
    raise ValueError(f"extension kind {cls.kind!r} registered twice")
  _EXTENSIONS[cls.kind] = cls
  return cls


def extension_class(kind: str) -> type[Extension]:
  """The registered class of `kind` (method files register theirs when imported)."""
  if kind not in _EXTENSIONS:
    raise ValueError(f"unknown extension kind {kind!r}; known: {sorted(_EXTENSIONS)}")
  return _EXTENSIONS[kind]


def to_dict(ext: Extension) -> dict[str, Any]:
  """JSON-able {'kind', 'fields'} of an extension spec (tuples become lists)."""
  return {"kind": ext.kind, "fields": _jsonable(dataclasses.asdict(ext))}


def from_dict(d: dict[str, Any]) -> Extension:
  """Inverse of `to_dict` (lists become tuples, so the spec stays hashable)."""
  return extension_class(d["kind"])(**{k: _tuples(v) for k, v in d["fields"].items()})


def _jsonable(v: Any) -> Any:
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (tuple, list)):
    return [_jsonable(x) for x in v]
  return v


def _tuples(v: Any) -> Any:
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v

