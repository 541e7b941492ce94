"""Swin Transformer (Flax linen) with the per-head attention layout of the ViT.

Parameter tree (timm's current layout: the patch merging opens stage s >= 1):

  patch_embed/{proj,norm}                        Conv patch x patch, LayerNorm
  layers_{s}/downsample/{norm,reduction}         s >= 1; reduction has no bias
  layers_{s}/blocks_{b}/norm1
  layers_{s}/blocks_{b}/attn/{query,key,value}   kernel [C, heads, head_dim]
  layers_{s}/blocks_{b}/attn/out                 kernel [heads, head_dim, C]
  layers_{s}/blocks_{b}/attn/relative_position_bias_table   [(2w-1)^2, heads]
  layers_{s}/blocks_{b}/norm2
  layers_{s}/blocks_{b}/mlp/{fc1,fc2}
  norm, head

The attention is `layers.MultiHeadAttention` itself (subclassed to own the bias
table), so head gates, per-head scores, head masks and LoRA work as for the ViT. The
relative-position index and the shifted-window mask are numpy constants built at
trace time from the feature-map size; they are not parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from heat_jax.models import layers
from heat_jax.models.backbone import Backbone
from heat_jax.models.extensions import Hooks, Site, Tokens

Array = jax.Array
MASK_VALUE = -100.0  # timm / Microsoft value between tokens of different regions


def window_and_shift(resolution: tuple[int, int], window: int, shift: int
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
  """Per-axis window and shift: an axis no longer than the window is one window, unshifted."""
  win = tuple(r if r <= window else window for r in resolution)
  sh = tuple(0 if r <= window else shift for r in resolution)
  return win, sh  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def relative_position_index(win_h: int, win_w: int) -> np.ndarray:
  """[N, N] index into the bias table for a (win_h, win_w) window, N = win_h * win_w.

  Tokens (y1, x1), (y2, x2) map to (y1 - y2 + win_h - 1) * (2 win_w - 1) + x1 - x2 + win_w - 1.
  """
  ys, xs = np.meshgrid(np.arange(win_h), np.arange(win_w), indexing="ij")
  ys, xs = ys.reshape(-1), xs.reshape(-1)
  dy = ys[:, None] - ys[None, :] + win_h - 1
  dx = xs[:, None] - xs[None, :] + win_w - 1
  index = dy * (2 * win_w - 1) + dx
  index.setflags(write=False)
  return index


@functools.lru_cache(maxsize=None)
def shift_window_mask(height: int, width: int, window: tuple[int, int],
                      shift: tuple[int, int]) -> np.ndarray:
  """[num_windows, N, N] additive mask of a shifted block on a (padded) height x width map.

  The rolled map is cut into 3 x 3 regions by the slices [0:-w], [-w:-s], [-s:]
  on each axis; tokens of one window attend to each other only within a region
  (0), and get `MASK_VALUE` across regions.
  """
  labels = np.zeros((height, width), np.float32)
  (wh, ww), (sh, sw) = window, shift
  count = 0
  for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
    for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
      labels[hs, ws] = count
      count += 1
  windows = labels.reshape(height // wh, wh, width // ww, ww).transpose(0, 2, 1, 3)
  windows = windows.reshape(-1, wh * ww)
  mask = np.where(windows[:, None, :] != windows[:, :, None], MASK_VALUE, 0.0)
  mask = mask.astype(np.float32)
  mask.setflags(write=False)
  return mask


def window_partition(x: Array, window: tuple[int, int]) -> Array:
  """[B, H, W, C] -> [B, num_windows, win_h * win_w, C] (windows in row-major order)."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_merge(windows: Array, window: tuple[int, int], height: int, width: int) -> Array:
  """Inverse of `window_partition`: [B, num_windows, N, C] -> [B, H, W, C]."""
  b, _, _, c = windows.shape
  wh, ww = window
  x = windows.reshape(b, height // wh, width // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


class WindowAttention(layers.MultiHeadAttention):
  """`MultiHeadAttention` over windows plus the relative position bias table.

  Input [B, num_windows, N, C]; `mask` [num_windows, N, N] or None. The bias table
  `[(2 win_h - 1)(2 win_w - 1), heads]` lives next to query/key/value/out; column h
  belongs to head h.
  """

  window: tuple[int, int] = (7, 7)

  @nn.compact
  def __call__(self, x: Array, *, gate: Optional[Array] = None,  # type: ignore[override]
               mask: Optional[np.ndarray] = None, deterministic: bool = True,
               hooks: Optional[Hooks] = None, site: Optional[Site] = None) -> Array:
    wh, ww = self.window
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * wh - 1) * (2 * ww - 1), self.num_heads), self.param_dtype)
    index = relative_position_index(wh, ww)
    bias = jnp.transpose(table[index], (2, 0, 1)).astype(jnp.float32)  # [H, N, N]
    if mask is not None:
      bias = bias[None] + jnp.asarray(mask)[:, None]  # [nW, H, N, N]
    return super().__call__(x, gate=gate, attention_bias=bias, deterministic=deterministic,
                            hooks=hooks, site=site)


class SwinBlock(nn.Module):
  """(Shifted) window attention block: x + attn(LN(x)); x + mlp(LN(x)) on [B, H, W, C].

  `window` and `shift` are the stage's targets; they are clamped to the feature-map
  size at trace time as timm does.
  """

  num_heads: int
  window: int = 7
  shift: int = 0
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, gate: Optional[Array] = None,
               deterministic: bool = True, hooks: Optional[Hooks] = None,
               site: Optional[Site] = None) -> Array:
    b, h, w, c = x.shape
    norm = dict(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    drop_path = layers.DropPath(self.drop_path_rate)
    win, shift = window_and_shift((h, w), self.window, self.shift)

    y = nn.LayerNorm(name="norm1", **norm)(x)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
    pad_h, pad_w = (-h) % win[0], (-w) % win[1]
    if pad_h or pad_w:
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    mask = shift_window_mask(hp, wp, win, shift) if any(shift) else None
    y = WindowAttention(num_heads=self.num_heads, window=win,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="attn")(
                            window_partition(y, win), gate=gate, mask=mask,
                            deterministic=deterministic, hooks=hooks, site=site)
    y = window_merge(y, win, hp, wp)[:, :h, :w]
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    if hooks is not None:
      y = hooks.branch(self, site, "attention", x, y, deterministic)
    x = x + drop_path(y, deterministic)

    y = nn.LayerNorm(name="norm2", **norm)(x)
    y = layers.MlpBlock(int(c * self.mlp_ratio), approximate_gelu=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, dense_names=("fc1", "fc2"),
                        name="mlp")(y, deterministic)
    if hooks is not None:
      y = hooks.branch(self, site, "mlp", x, y, deterministic)
    return x + drop_path(y, deterministic)


class PatchMerging(nn.Module):
  """2 x 2 neighbours -> LayerNorm -> Linear (no bias); odd sides are zero-padded.

  Concatenation order (timm): x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2].
  """

  out_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _, h, w, _ = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="reduction")(x)


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection followed by LayerNorm; [B, H, W, 3] -> [B, h, w, C]."""

  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj")(images.astype(self.dtype))
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="norm")(x)


class SwinStage(nn.Module):
  """Optional patch merging, then `depth` blocks alternating shift 0 / window // 2."""

  dim: int
  depth: int
  num_heads: int
  window: int
  downsample: bool
  mlp_ratio: float = 4.0
  drop_path_rates: tuple[float, ...] = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, gates: Optional[Array], deterministic: bool,
               hooks: Optional[Hooks] = None, sites: tuple[Site, ...] = ()
               ) -> tuple[Array, list[Array]]:
    """Returns the stage output [B, h, w, C] and every block's tokens [B, h * w, C]."""
    if self.downsample:
      x = PatchMerging(self.dim, self.dtype, self.param_dtype, name="downsample")(x)
    rates = self.drop_path_rates or (0.0,) * self.depth
    tokens = []
    for i in range(self.depth):
      x = SwinBlock(
          num_heads=self.num_heads, window=self.window,
          shift=0 if i % 2 == 0 else self.window // 2, mlp_ratio=self.mlp_ratio,
          drop_path_rate=rates[i], dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"blocks_{i}")(
              x, None if gates is None else gates[i], deterministic, hooks,
              sites[i] if sites else None)
      tokens.append(x.reshape(x.shape[0], -1, x.shape[-1]))
    return x, tokens


class Swin(Backbone):
  """Swin Transformer classifier.

  `__call__(images, head_gates=None, train=False, return_block_tokens=False)`:
    images: [B, H, W, 3] float32, sides multiples of `patch_size`.
    head_gates: optional [num_blocks, max_heads] over all blocks of all stages; block
      i uses head_gates[i, :heads_i] and ignores the rest (ones = plain model, zero
      removes the head exactly).
    return_block_tokens: also return a tuple with every block's output tokens
      [B, tokens, C] (token count and width change between stages).
  """

  patch_size: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0

  family = "swin"

  @property
  def heads_per_layer(self) -> tuple[int, ...]:
    return tuple(h for d, h in zip(self.depths, self.num_heads) for _ in range(d))

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(self.embed_dim * 2 ** s for s, d in enumerate(self.depths) for _ in range(d))

  @nn.compact
  def __call__(self, images: Array, head_gates: Optional[Array] = None,
               train: bool = False, return_block_tokens: bool = False):
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
    deterministic = not train
    per_block = self.heads_per_layer
    head_gates = layers.gates_or_ones(head_gates, (len(per_block), max(per_block)))
    self.check_input(images)
    hooks = self.hooks()
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.param_dtype, name="patch_embed")(images)

    rates = layers.drop_path_rates(self.drop_path_rate, len(per_block))
    block_tokens: list[Array] = []
    grids: list[tuple[int, int]] = []
    start = 0
    for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      gates = None if head_gates is None else head_gates[start:start + depth, :heads]
      dim = self.embed_dim * 2 ** s
      sites = tuple(Site(layer=start + i, num_heads=heads, head_dim=dim // heads, width=dim,
                         family="swin", num_layers=len(per_block), stage=s)
                    for i in range(depth))
      x, tokens = SwinStage(
          dim=dim, depth=depth, num_heads=heads,
          window=self.window_size, downsample=s > 0, mlp_ratio=self.mlp_ratio,
          drop_path_rates=tuple(rates[start:start + depth]), dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"layers_{s}")(
              x, gates, deterministic, hooks, sites)
      block_tokens.extend(tokens)
      grids.extend([tuple(x.shape[1:3])] * depth)
      start += depth

    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    x = jnp.mean(x, axis=(1, 2))
    logits = self.classify(hooks, x, Tokens(tuple(block_tokens), 0, tuple(grids),
                                            images.astype(self.dtype)), train)
    if return_block_tokens:
      return logits, tuple(block_tokens)
    return logits
