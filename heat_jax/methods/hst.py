"""HST: Hierarchical Side-Tuning (Lin et al., arXiv 2310.05393), ViT only.

A small hierarchical side network reads every block of the frozen ViT and classifies:

  * meta tokens (`hst_meta` [layers, 1, D], Xavier-uniform): before block l a fresh
    token is inserted after the class token and block l-1's meta output is dropped
    (like deep VPT with one token). HST puts it before the class token; attention is
    permutation-equivariant and the token gets no position embedding, so the place
    does not change any output. Block l's output at that index is metaG_l, its patch
    tokens (the last grid tokens) are F_l.
  * side network (`hst_side`): a pixel stem (conv k3 s2 no bias -> BatchNorm -> ReLU
    -> conv k2 s2 -> LayerNorm: H/4 x W/4) for stage 0, then per later stage conv k3 s2
    p1 -> LayerNorm (the map halves, rounding up). Each stage has ONE T-Bridge
    Linear(D -> d) shared by its layers. Side layer l (fed by block l):
      metaR = LN_l(T(metaG_l)); FG = T(resize(F_l -> stage map)); GlobalT = mean(FG)
      x += DropPath(CrossAttn(LN(x), K/V = [metaR; GlobalT]))   # 2 key/value tokens
      x += FG
      x += DropPath(MLP_4x(LN(x)))
    and each stage ends with a LayerNorm. Projecting before the bilinear resize is
    exact (the weights of every output pixel sum to 1) and much cheaper; the resize is
    half-pixel bilinear without antialiasing, as torch's F.interpolate(bilinear,
    align_corners=False).
  * head: mean-pool -> BatchNorm (no affine, `batch_stats`) -> Dense `head` (created in
    the ViT scope, so the engine treats it as the classifier).

Trainable: meta tokens, side network, T-Bridges, head and the block LayerNorms
(LayerNorm_0 / LayerNorm_1 of every encoderblock; `encoder_norm` is frozen and unused).
Not mergeable: the side network is a second model.

Options (`config.hst.*`, strings so `--config.hst.widths=32,48` works; "auto" derives
the value from the backbone):
  widths     side width per stage          auto: the paper's 32,48,64,72 (first S)
  heads      cross-attention heads / stage  auto: the paper's 2,4,8,12 (first S)
  depths     backbone blocks per stage     auto: an even split of the blocks
  blocks     blocks feeding each stage, e.g. 0-2,3-5,6-8,9-11 (each block exactly once,
             in order)                     auto: from depths
  drop_path  side-network drop path        auto: config.model.drop_path_rate (HST uses
             one rate for both)
  mlp_ratio  side MLP width / d (4)

The auto rule (number of stages S): the length of any explicit list; else
min(4, number of blocks, number of stage maps before the map reaches 1x1). Stage maps
follow the image, not the patch grid: the stem gives H/4, each later stage halves it
(ViT-B/16 at 224: 56/28/14/7 = 4x, 2x, 1x, 0.5x its 14x14 grid; ViT-micro at 32 px: 8/4,
2 stages of 1 block since it has 2 blocks). Blocks are split evenly over the stages,
earlier stages taking the remainder (12 blocks / 4 stages = 3 each).

Parameter count (ViT-B/16, C classes): 764,840 + 73 C (see README "HST").
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models import create_model, model_architecture
from heat_jax.models.extensions import Extension, Site, Tokens, register_extension
from heat_jax.models.layers import DropPath
from heat_jax.training import partition

Array = jax.Array

PAPER_WIDTHS = (32, 48, 64, 72)
PAPER_HEADS = (2, 4, 8, 12)
# The dense (segmentation) variant's side widths (paper, ADE20K); heads as above.
DENSE_WIDTHS = (64, 128, 256, 384)
MAX_AUTO_STAGES = len(PAPER_WIDTHS)
# Backbone parameters HST trains besides its own: every block's two LayerNorms.
BLOCK_NORM = re.compile(r"Transformer/encoderblock_\d+/LayerNorm_[01]/(scale|bias)")

# Initialisers of the reference code: Linear timm trunc_normal_(std=0.02), whose bounds
# are +-2 absolute (100 std), i.e. a plain normal; zero bias. Conv normal(0,
# sqrt(2 / (k * k * out))), zero bias. LayerNorm (1, 0).
_dense_init = nn.initializers.normal(stddev=0.02)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _meta_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  """torch's xavier_uniform_ on each (1, 1, D) token: fan_in = fan_out = D."""
  bound = math.sqrt(3.0 / shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def side_drop_path_rates(rate: float, n: int) -> list[float]:
  """torch.linspace(0, rate, n) over all side layers (n = 1 gives [0])."""
  return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def stage_maps(image_hw: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
  """The side network's map per stage: stem H/4 (k3 s2 p1, then k2 s2), then halving."""
  h = -(-image_hw[0] // 2) // 2
  w = -(-image_hw[1] // 2) // 2
  maps = []
  for _ in range(num_stages):
    maps.append((h, w))
    h, w = -(-h // 2), -(-w // 2)   # conv k3 s2 p1: ceil(n / 2)
  return maps


def max_stages(image_hw: tuple[int, int]) -> int:
  """Stages until the map is 1x1 (a stride-2 conv on 1x1 would add nothing)."""
  n, (h, w) = 1, stage_maps(image_hw, 1)[0]
  while max(h, w) > 1:
    n, h, w = n + 1, -(-h // 2), -(-w // 2)
  return n


# ----------------------------------------------------------------------------- modules


class _Stem(nn.Module):
  """Stage-0 embedding from pixels: conv k3 s2 -> BN -> ReLU -> conv k2 s2 -> LN."""

  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, train: bool) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=_conv_init, name="conv_0", **kw)(images)
    # torch BatchNorm2d defaults: momentum 0.1 (flax 0.9), eps 1e-5.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name="bn", **kw)(x)
    x = nn.relu(x)
    x = nn.Conv(self.width, (2, 2), strides=(2, 2), padding="VALID",
                kernel_init=_conv_init, name="conv_1", **kw)(x)
    return nn.LayerNorm(epsilon=1e-5, name="norm", **kw)(x)


class _StageEmbed(nn.Module):
  """Later stages: conv k3 s2 p1 (halves the map) -> LN."""

  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                kernel_init=_conv_init, name="conv", **kw)(x)
    return nn.LayerNorm(epsilon=1e-5, name="norm", **kw)(x)


class _SideBlock(nn.Module):
  """Side layer: cross-attention to [metaR; GlobalT], + FG, MLP (pre-norm, drop path)."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, kv: Array, fg: Array, deterministic: bool) -> Array:
    b, n, d = x.shape
    hd = d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dense = dict(kernel_init=_dense_init, **kw)
    y = nn.LayerNorm(epsilon=1e-6, name="norm_0", **kw)(x)
    q = nn.Dense(d, name="query", **dense)(y).reshape(b, n, self.num_heads, hd)
    k = nn.Dense(d, name="key", **dense)(kv).reshape(b, -1, self.num_heads, hd)
    v = nn.Dense(d, name="value", **dense)(kv).reshape(b, -1, self.num_heads, hd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd ** -0.5, q.dtype), k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d)
    y = nn.Dense(d, name="out", **dense)(y)
    x = x + DropPath(self.drop_path, name="drop_path_0")(y, deterministic)
    x = x + fg
    y = nn.LayerNorm(epsilon=1e-6, name="norm_1", **kw)(x)
    y = nn.Dense(int(d * self.mlp_ratio), name="fc_0", **dense)(y)
    y = nn.Dense(d, name="fc_1", **dense)(nn.gelu(y, approximate=False))
    return x + DropPath(self.drop_path, name="drop_path_1")(y, deterministic)


class HstSide(nn.Module):
  """The hierarchical side network: pooled, batch-normalised features [B, widths[-1]].

  `metas[l]` [B, D] and `feats[l]` [B, gh, gw, D] are block l's meta output and patch
  grid; `stages[l]` is the stage block l feeds.
  """

  widths: tuple[int, ...]
  heads: tuple[int, ...]
  stages: tuple[int, ...]
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dense: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, metas: Sequence[Array], feats: Sequence[Array],
               train: bool) -> Array | list[Array]:
    """Pooled features, or (`dense`) every stage's normalised map, finest first."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rates = side_drop_path_rates(self.drop_path, len(self.stages))
    maps = []
    x = _Stem(self.widths[0], name="stem", **kw)(images, train)
    for s, width in enumerate(self.widths):
      if s:
        x = _StageEmbed(width, name=f"embed_{s}", **kw)(x)
      b, h, w, _ = x.shape
      bridge = nn.Dense(width, kernel_init=_dense_init, name=f"bridge_{s}", **kw)
      tokens = x.reshape(b, h * w, width)
      for l in (i for i, st in enumerate(self.stages) if st == s):
        meta = nn.LayerNorm(epsilon=1e-5, name=f"meta_norm_{l}", **kw)(bridge(metas[l]))
        fg = jax.image.resize(bridge(feats[l]), (b, h, w, width), "bilinear",
                              antialias=False).reshape(b, h * w, width)
        kv = jnp.stack([meta, jnp.mean(fg, axis=1)], axis=1)
        tokens = _SideBlock(self.heads[s], self.mlp_ratio, rates[l], name=f"block_{l}",
                            **kw)(tokens, kv, fg, not train)
      tokens = nn.LayerNorm(epsilon=1e-6, name=f"norm_{s}", **kw)(tokens)
      x = tokens.reshape(b, h, w, width)
      maps.append(x)
    if self.dense:
      return maps
    pooled = jnp.mean(tokens, axis=1)
    # The reference's BatchNorm1d(affine=False, eps=1e-6), momentum 0.1 (flax 0.9).
    return nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False,
                        momentum=0.9, epsilon=1e-6, name="fc_norm", **kw)(pooled)


@register_extension
@dataclasses.dataclass(frozen=True)
class HstSpec(Extension):
  """HST's meta tokens (`tokens`) and side network + classifier (`head`).

  `stages[l]` is the side stage backbone block l feeds (non-decreasing, from 0).
  `dense`: the side network's stage maps are the model's multi-scale `features` (for a
  segmentation head) and HST adds no classifier.
  """

  widths: tuple[int, ...] = PAPER_WIDTHS
  heads: tuple[int, ...] = PAPER_HEADS
  stages: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dense: bool = False

  kind = "hst"
  param_names = ("hst_meta", "hst_side")
  families = ("vit",)

  def shared(self, host: nn.Module) -> Array:
    if len(self.stages) != host.num_layers:
      raise ValueError(f"hst maps {len(self.stages)} blocks, the model has "
                       f"{host.num_layers}")
    return host.param("hst_meta", _meta_init, (host.num_layers, 1, host.hidden_size),
                      host.param_dtype)

  def tokens(self, host: nn.Module, site: Site, x: Array, start: int, *, shared: Any,
             deterministic: bool) -> Array:
    meta = jnp.broadcast_to(shared[site.layer].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
    rest = start if site.layer == 0 else start + 1   # drop block l-1's meta output
    return jnp.concatenate([x[:, :start], meta, x[:, rest:]], axis=1)

  def _side(self, host: nn.Module, tokens: Tokens, train: bool) -> Array | list[Array]:
    if tokens.images is None:
      raise ValueError("hst needs the model's input images (Tokens.images)")
    b = tokens.images.shape[0]
    metas = [t[:, tokens.num_prefix] for t in tokens.blocks]
    feats = [t[:, t.shape[1] - gh * gw:].reshape(b, gh, gw, t.shape[2])
             for t, (gh, gw) in zip(tokens.blocks, tokens.grids)]
    kw = dict(dtype=host.dtype, param_dtype=host.param_dtype)
    return HstSide(self.widths, self.heads, self.stages, self.drop_path, self.mlp_ratio,
                   self.dense, name="hst_side", **kw)(tokens.images, metas, feats, train)

  def features(self, host: nn.Module, tokens: Tokens, *, shared: Any,
               train: bool) -> Optional[list[Array]]:
    return self._side(host, tokens, train) if self.dense else None

  def head(self, host: nn.Module, features: Array, tokens: Tokens, num_classes: int, *,
           shared: Any, train: bool) -> Optional[Array]:
    if self.dense:
      return None
    pooled = self._side(host, tokens, train)
    kw = dict(dtype=host.dtype, param_dtype=host.param_dtype)
    return nn.Dense(num_classes, kernel_init=_dense_init, name="head", **kw)(pooled)


# ----------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class Layout:
  """HST's options resolved for one backbone."""

  widths: tuple[int, ...]
  heads: tuple[int, ...]
  stages: tuple[int, ...]          # per backbone block
  drop_path: float
  mlp_ratio: float
  maps: tuple[tuple[int, int], ...]

  @property
  def depths(self) -> tuple[int, ...]:
    return tuple(self.stages.count(s) for s in range(len(self.widths)))

  def blocks(self) -> str:
    """The `config.hst.blocks` form, e.g. '0-2,3-5'."""
    out, start = [], 0
    for d in self.depths:
      out.append(f"{start}-{start + d - 1}" if d > 1 else str(start))
      start += d
    return ",".join(out)

  def info(self) -> dict[str, Any]:
    return {"widths": list(self.widths), "heads": list(self.heads),
            "depths": list(self.depths), "blocks": self.blocks(),
            "maps": [list(m) for m in self.maps], "drop_path": self.drop_path,
            "mlp_ratio": self.mlp_ratio}


def _int_list(name: str, value: Any) -> Optional[list[int]]:
  """None for 'auto', else the integers of '32,48' (or a list / tuple)."""
  if isinstance(value, str):
    if value.strip() == "auto":
      return None
    parts = [p.strip() for p in value.split(",")]
  else:
    parts = list(value)
  try:
    out = [int(p) for p in parts]
  except (TypeError, ValueError):
    raise ConfigError(f"config.hst.{name}={value!r} must be 'auto' or comma-separated "
                      "integers, e.g. 32,48,64,72") from None
  if not out or min(out) < 1:
    raise ConfigError(f"config.hst.{name}={value!r} must list integers >= 1")
  return out


def _block_groups(value: Any, num_layers: int) -> Optional[list[list[int]]]:
  """None for 'auto', else the blocks of each stage from '0-2,3-5,...', checked."""
  if isinstance(value, str) and value.strip() == "auto":
    return None
  hint = f"e.g. 0-2,3-5 (the model has blocks 0-{num_layers - 1})"
  groups = []
  for part in str(value).split(","):
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not m:
      raise ConfigError(f"config.hst.blocks={value!r}: {part.strip()!r} is not a block or "
                        f"range a-b; {hint}")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if a > b:
      raise ConfigError(f"config.hst.blocks={value!r}: range {a}-{b} is empty; {hint}")
    groups.append(list(range(a, b + 1)))
  order = [i for g in groups for i in g]
  seen: set[int] = set()
  for i in order:
    if i >= num_layers:
      raise ConfigError(f"config.hst.blocks={value!r}: block {i} does not exist; {hint}")
    if i in seen:
      raise ConfigError(f"config.hst.blocks={value!r}: block {i} feeds two side layers; "
                        "each backbone block must feed exactly one")
    seen.add(i)
  missing = sorted(set(range(num_layers)) - seen)
  if missing:
    raise ConfigError(f"config.hst.blocks={value!r}: block {missing[0]} feeds no side "
                      f"layer; each backbone block must feed exactly one; {hint}")
  if order != sorted(order):
    raise ConfigError(f"config.hst.blocks={value!r}: stages must take the blocks in order "
                      f"(the stage of each block must not decrease); {hint}")
  return groups


def _float(name: str, value: Any, default: float) -> float:
  if isinstance(value, str) and value.strip() == "auto":
    return default
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"config.hst.{name}={value!r} must be 'auto' or a number") from None
  if not math.isfinite(out):
    raise ConfigError(f"config.hst.{name}={value!r} must be finite")
  return out


def resolve(options: ml_collections.ConfigDict, *, num_layers: int,
            image_hw: tuple[int, int], model_drop_path: float,
            auto_widths: tuple[int, ...] = PAPER_WIDTHS) -> Layout:
  """`config.hst` resolved for a backbone (the auto rule of the module docstring);
  `auto_widths`: the widths `auto` takes (DENSE_WIDTHS for segmentation)."""
  widths = _int_list("widths", options.widths)
  heads = _int_list("heads", options.heads)
  depths = _int_list("depths", options.depths)
  groups = _block_groups(options.blocks, num_layers)
  lengths = {k: len(v) for k, v in (("widths", widths), ("heads", heads),
                                    ("depths", depths), ("blocks", groups)) if v is not None}
  if len(set(lengths.values())) > 1:
    shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
    raise ConfigError(f"config.hst: {shown} entries; give one entry per side stage")
  if lengths:
    num_stages = next(iter(lengths.values()))
  else:
    num_stages = min(MAX_AUTO_STAGES, num_layers, max_stages(image_hw))
  if num_stages > num_layers:
    raise ConfigError(f"config.hst: {num_stages} side stages but the model has "
                      f"{num_layers} blocks; every stage needs at least one block")
  for name, value, table in (("widths", widths, auto_widths), ("heads", heads, PAPER_HEADS)):
    if value is None and num_stages > len(table):
      raise ConfigError(f"config.hst.{name}=auto covers at most {len(table)} stages; give "
                        f"{num_stages} {name}, e.g. --config.hst.{name}=...")
  widths = widths or list(auto_widths[:num_stages])
  heads = heads or list(PAPER_HEADS[:num_stages])
  for s, (w, h) in enumerate(zip(widths, heads)):
    if w % h:
      raise ConfigError(f"config.hst.heads: {h} heads do not divide the stage-{s} width "
                        f"{w} (config.hst.widths)")
  if groups is not None:
    from_blocks = [len(g) for g in groups]
    if depths is not None and depths != from_blocks:
      raise ConfigError(f"config.hst.depths={options.depths!r} disagrees with "
                        f"config.hst.blocks={options.blocks!r} ({from_blocks} blocks per "
                        "stage); set one of them to auto")
    depths = from_blocks
  elif depths is not None:
    if sum(depths) != num_layers:
      raise ConfigError(f"config.hst.depths={options.depths!r} covers {sum(depths)} blocks "
                        f"but the model has {num_layers}; each block feeds one side layer")
  else:
    q, r = divmod(num_layers, num_stages)
    depths = [q + (s < r) for s in range(num_stages)]
  stages = tuple(s for s, d in enumerate(depths) for _ in range(d))
  drop_path = _float("drop_path", options.drop_path, model_drop_path)
  if not 0.0 <= drop_path < 1.0:
    raise ConfigError(f"config.hst.drop_path={options.drop_path!r} must be in [0, 1)")
  mlp_ratio = _float("mlp_ratio", options.mlp_ratio, 4.0)
  if mlp_ratio <= 0 or int(mlp_ratio * min(widths)) < 1:
    raise ConfigError(f"config.hst.mlp_ratio={options.mlp_ratio!r} must be > 0")
  return Layout(tuple(widths), tuple(heads), stages, drop_path, mlp_ratio,
                tuple(stage_maps(image_hw, num_stages)))


# ----------------------------------------------------------------------------- method


@register_method
class Hst(Method):
  name = "hst"

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    c = ml_collections.ConfigDict()
    c.widths = "auto"        # side width per stage, e.g. "32,48,64,72"
    c.heads = "auto"         # cross-attention heads per stage, e.g. "2,4,8,12"
    c.depths = "auto"        # backbone blocks (= side layers) per stage, e.g. "3,3,3,3"
    c.blocks = "auto"        # blocks feeding each stage, e.g. "0-2,3-5,6-8,9-11"
    c.drop_path = "auto"     # side drop path; auto = config.model.drop_path_rate
    c.mlp_ratio = 4.0
    return {"hst": c}

  def layout(self) -> Layout:
    model = self.config.model
    if model_architecture(model.name) not in HstSpec.families:
      raise ConfigError("hst is ViT-only: its per-block meta token joins each block's "
                        "global attention, which Swin's shifted windows have no place for; "
                        "use lora or adapter on Swin")
    size = model.image_size
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    num_layers = len(create_model(model.name, 1).heads_per_layer)
    return resolve(self.config.hst, num_layers=num_layers,
                   image_hw=hw, model_drop_path=float(model.drop_path_rate),
                   auto_widths=DENSE_WIDTHS if self.dense else PAPER_WIDTHS)

  @property
  def dense(self) -> bool:
    """Segmentation: the side stages feed the task's decoder (`HstSpec.dense`)."""
    from heat_jax.segmentation.head import is_dense   # noqa: PLC0415 (import cycle)
    return is_dense(self.config)

  def extensions(self) -> tuple[Extension, ...]:
    lay = self.layout()
    self.info = {"hst": lay.info()}
    return (HstSpec(widths=lay.widths, heads=lay.heads, stages=lay.stages,
                    drop_path=lay.drop_path, mlp_ratio=lay.mlp_ratio, dense=self.dense),)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(
        ctx.params, lambda k, _: (k.split("/")[0] in HstSpec.param_names
                                  or BLOCK_NORM.fullmatch(k) is not None))
    return self.with_head(ctx.params, mask)
