"""Synthetic Swin state dicts in timm's (and Microsoft's) exact key layout.

`swin_state_dict(...)` draws random weights from a seeded numpy generator (PCG64,
stable across machines), shaped and named as `timm.models.swin_transformer.
SwinTransformer.state_dict()` would hold them (torch layouts: Linear (out, in), Conv
(O, I, kh, kw)). Tests regenerate full-size weights from the seed, so only the timm
logits need to be committed as fixtures. Scales keep activations O(1) and make the
relative position bias matter, so layout errors change the logits visibly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The tiny configuration of the fixtures (matches the `Swin-tiny` model name).
TINY = dict(img_size=32, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
            window_size=4)
# Feature maps that are not multiples of the window (padding) and an odd-sided merge:
# 10x10 (window 4, padded to 12), 5x5 (padded to 8), 3x3 (merged from 5x5; window 3).
PADDED = dict(img_size=40, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8),
              window_size=4)
# Full-size configurations checked against timm with regenerated weights.
FULL = {
    "Swin-T": dict(img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
                   num_heads=(3, 6, 12, 24), window_size=7),
    "Swin-B": dict(img_size=224, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2),
                   num_heads=(4, 8, 16, 32), window_size=7),
}


def stage_windows(img_size: int, patch_size: int, depths: tuple[int, ...],
                  window_size: int) -> list[int]:
  """The (square) window of each stage after clamping to the feature map, as timm."""
  grid = img_size // patch_size
  return [min(-(-grid // 2 ** s), window_size) for s in range(len(depths))]


def swin_state_dict(*, img_size: int, patch_size: int, embed_dim: int,
                    depths: tuple[int, ...], num_heads: tuple[int, ...], window_size: int,
                    mlp_ratio: float = 4.0, num_classes: int = 10, seed: int = 0,
                    table_std: float = 1.0) -> dict[str, np.ndarray]:
  """Random Swin weights named as timm's current `state_dict()` (no buffers)."""
  rng = np.random.default_rng(seed)

  def normal(*shape: int, std: float = 0.02) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

  out: dict[str, np.ndarray] = {}

  def norm(prefix: str, d: int) -> None:
    out[f"{prefix}.weight"] = 1.0 + normal(d, std=0.1)
    out[f"{prefix}.bias"] = normal(d, std=0.05)

  def linear(prefix: str, d_in: int, d_out: int, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = normal(d_out, d_in, std=d_in ** -0.5)
    if bias:
      out[f"{prefix}.bias"] = normal(d_out, std=0.05)

  p = patch_size
  out["patch_embed.proj.weight"] = normal(embed_dim, 3, p, p, std=(3 * p * p) ** -0.5)
  out["patch_embed.proj.bias"] = normal(embed_dim, std=0.05)
  norm("patch_embed.norm", embed_dim)
  windows = stage_windows(img_size, patch_size, depths, window_size)
  for s, (depth, heads) in enumerate(zip(depths, num_heads)):
    dim = embed_dim * 2 ** s
    if s > 0:
      norm(f"layers.{s}.downsample.norm", 2 * dim)
      linear(f"layers.{s}.downsample.reduction", 2 * dim, dim, bias=False)
    for b in range(depth):
      pre = f"layers.{s}.blocks.{b}"
      norm(f"{pre}.norm1", dim)
      out[f"{pre}.attn.relative_position_bias_table"] = normal(
          (2 * windows[s] - 1) ** 2, heads, std=table_std)
      linear(f"{pre}.attn.qkv", dim, 3 * dim)
      linear(f"{pre}.attn.proj", dim, dim)
      norm(f"{pre}.norm2", dim)
      hidden = int(dim * mlp_ratio)
      linear(f"{pre}.mlp.fc1", dim, hidden)
      linear(f"{pre}.mlp.fc2", hidden, dim)
  features = embed_dim * 2 ** (len(depths) - 1)
  norm("norm", features)
  linear("head.fc", features, num_classes)
  return out


def microsoft_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a timm-layout state dict to the original Microsoft layout.

  `layers.{s}.downsample` (s >= 1) moves to the end of stage s - 1, `head.fc.` becomes
  `head.`, and every block gets the `relative_position_index` buffer the old files
  carry (int64, values irrelevant to loaders that recompute it).
  """
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    if key.startswith("layers.") and ".downsample." in key:
      stage, rest = key[len("layers."):].split(".", 1)
      key = f"layers.{int(stage) - 1}.{rest}"
    elif key.startswith("head.fc."):
      key = "head." + key[len("head.fc."):]
    out[key] = value
    if key.endswith(".attn.relative_position_bias_table"):
      w = (int(round(value.shape[0] ** 0.5)) + 1) // 2
      out[key.replace("bias_table", "index")] = np.zeros((w * w, w * w), np.int64)
  return out


def flax_params(state: dict[str, np.ndarray], model: Any, *, image_size: int | None = None,
                interpolation: str = "bicubic", copy_head: bool = True) -> dict:
  """Converts a timm-layout state dict to the parameter tree of a heat_jax `Swin`.

  No random init is run (shapes come from `jax.eval_shape`); with `copy_head` the
  classifier is taken from `head.fc.*` so logits compare with timm's directly.
  """
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from heat_jax.checkpoints import swin_timm

  size = image_size or model.image_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  template = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(shapes["params"], sep="/").items()}
  flat, _ = swin_timm.convert(state, template, interpolation=interpolation)
  if copy_head:
    flat["head/kernel"] = np.ascontiguousarray(state["head.fc.weight"].T)
    flat["head/bias"] = state["head.fc.bias"]
  return traverse_util.unflatten_dict(flat, sep="/")
