"""Synthetic checkpoints in the exact public on-disk layouts (for tests and tools).

`vit_arrays(...)` draws random weights from a seeded numpy generator (PCG64, stable
across machines) and names them as a vit_jax or big_vision `.npz` would. Tests
regenerate the same file from the seed, so reference logits from timm can be
committed as small fixtures while the weights are not.
"""

from __future__ import annotations

import numpy as np

from heat_jax.io_utils import write_npz

_VIT_JAX_CHILDREN = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2",
                     "MlpBlock_3")
_BIG_VISION_CHILDREN = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1",
                        "MlpBlock_0")


def vit_arrays(*, hidden: int, layers: int, heads: int, mlp: int, patch: int,
               grid: int, num_classes: int, seed: int = 0, dialect: str = "vit_jax",
               classifier: str = "token", representation_size: int | None = None,
               scanned: bool = False, prefix: str = "") -> dict[str, np.ndarray]:
  """Random ViT weights named as in a vit_jax (pre-Linen) or big_vision npz."""
  rng = np.random.default_rng(seed)
  hd = hidden // heads

  def normal(*shape, std=0.02):
    return (rng.standard_normal(shape) * std).astype(np.float32)

  def norm(d):
    return {"scale": (1.0 + normal(d, std=0.1)), "bias": normal(d, std=0.05)}

  out: dict[str, np.ndarray] = {}
  out["embedding/kernel"] = normal(patch, patch, 3, hidden, std=(3 * patch * patch) ** -0.5)
  out["embedding/bias"] = normal(hidden)
  n_tok = grid * grid
  if classifier == "token":
    out["cls"] = normal(1, 1, hidden)
  if dialect == "vit_jax":
    slot = 1 if classifier == "token" else 0
    out["Transformer/posembed_input/pos_embedding"] = normal(1, n_tok + slot, hidden)
    children = _VIT_JAX_CHILDREN
  elif dialect == "big_vision":
    out["pos_embedding"] = normal(1, n_tok, hidden)
    children = _BIG_VISION_CHILDREN
  else:
    raise ValueError(f"unknown dialect {dialect!r}")
  ln0, attn, ln1, mlp_name = children
  blocks = []
  for _ in range(layers):
    b = {}
    for k, v in norm(hidden).items():
      b[f"{ln0}/{k}"] = v
    for k, v in norm(hidden).items():
      b[f"{ln1}/{k}"] = v
    for name in ("query", "key", "value"):
      b[f"{attn}/{name}/kernel"] = normal(hidden, heads, hd, std=hidden ** -0.5)
      b[f"{attn}/{name}/bias"] = normal(heads, hd)
    b[f"{attn}/out/kernel"] = normal(heads, hd, hidden, std=hidden ** -0.5)
    b[f"{attn}/out/bias"] = normal(hidden)
    b[f"{mlp_name}/Dense_0/kernel"] = normal(hidden, mlp, std=hidden ** -0.5)
    b[f"{mlp_name}/Dense_0/bias"] = normal(mlp)
    b[f"{mlp_name}/Dense_1/kernel"] = normal(mlp, hidden, std=mlp ** -0.5)
    b[f"{mlp_name}/Dense_1/bias"] = normal(hidden)
    blocks.append(b)
  if scanned:
    for k in blocks[0]:
      out[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
  else:
    for i, b in enumerate(blocks):
      for k, v in b.items():
        out[f"Transformer/encoderblock_{i}/{k}"] = v
  for k, v in norm(hidden).items():
    out[f"Transformer/encoder_norm/{k}"] = v
  width = hidden
  if representation_size:
    out["pre_logits/kernel"] = normal(hidden, representation_size, std=hidden ** -0.5)
    out["pre_logits/bias"] = normal(representation_size)
    width = representation_size
  out["head/kernel"] = normal(width, num_classes, std=width ** -0.5)
  out["head/bias"] = normal(num_classes)
  return {prefix + k: v for k, v in out.items()}


def write_vit_npz(path, **kwargs) -> dict[str, np.ndarray]:
  """Writes `vit_arrays(**kwargs)` to `path` and returns the arrays."""
  arrays = vit_arrays(**kwargs)
  write_npz(path, arrays)
  return arrays
