"""ViT `.npz` checkpoints: the vit_jax and big_vision dialects -> canonical names.

Canonical (in-memory) names are those of `heat_jax.models.vit` (vit_jax after
`convert_pre_linen`). Handled here:
  * key prefixes `opt/target/`, `params/`, `params/img/`;
  * pre-Linen block children (`MultiHeadDotProductAttention_1`, `LayerNorm_2`,
    `MlpBlock_3`) -> Linen names;
  * big_vision's top-level `pos_embedding` without a class slot, and scanned blocks
    (`Transformer/encoderblock/...` with a leading depth axis);
  * position-embedding resizing to the model's grid (class slot kept).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from heat_jax import resize
from heat_jax.checkpoints.formats import Exporter, register_exporter
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import load_npz, write_npz

_PREFIXES = ("opt/target/", "params/img/", "params/")
# Block children: pre-Linen on-disk name -> Linen in-memory name (and the inverse).
PRE_LINEN_TO_LINEN = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1":
                      "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
                      "MlpBlock_3": "MlpBlock_0"}
LINEN_TO_PRE_LINEN = {v: k for k, v in PRE_LINEN_TO_LINEN.items()}
POSEMB = "Transformer/posembed_input/pos_embedding"


def detect_dialect(arrays: dict[str, np.ndarray]) -> str:
  """'vit_jax' or 'big_vision' (after prefix stripping)."""
  keys = set(arrays)
  if "pos_embedding" in keys or any(k.startswith("Transformer/encoderblock/") for k in keys):
    return "big_vision"
  if any("/MultiHeadDotProductAttention_0/" in k for k in keys):
    return "big_vision"
  return "vit_jax"


def strip_prefix(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  for prefix in _PREFIXES:
    if f"{prefix}embedding/kernel" in arrays:
      return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  return dict(arrays)


def to_canonical(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
  """Renames a raw npz dict to canonical names.

  Returns the renamed dict and facts about it: dialect and whether the position
  embedding has a class slot.
  """
  arrays = strip_prefix(arrays)
  if "embedding/kernel" not in arrays:
    raise CheckpointError("this .npz has no 'embedding/kernel': it is not a ViT "
                          "checkpoint in the vit_jax or big_vision layout")
  if any(k.startswith("MAPHead_0/") for k in arrays):
    raise CheckpointError("this checkpoint uses big_vision MAP pooling (MAPHead_0), "
                          "which heat_jax does not implement; use a 'tok' or 'gap' "
                          "checkpoint")
  dialect = detect_dialect(arrays)
  out: dict[str, np.ndarray] = {}
  for key, value in arrays.items():
    if key.startswith("Transformer/encoderblock/"):  # scanned: unstack the depth axis
      rest = key[len("Transformer/encoderblock/"):]
      for i in range(value.shape[0]):
        out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
      continue
    match = re.match(r"(Transformer/encoderblock_\d+)/([^/]+)(/.*)$", key)
    if match and dialect == "vit_jax":
      child = PRE_LINEN_TO_LINEN.get(match.group(2), match.group(2))
      key = f"{match.group(1)}/{child}{match.group(3)}"
    out[key] = value
  # The slot depends on where the posemb is stored, not on the block names: a
  # Linen-named vit_jax file keeps its class slot under Transformer/posembed_input.
  if "pos_embedding" in out:  # big_vision: top level, added before the cls concat
    out[POSEMB] = out.pop("pos_embedding")
    has_slot = False
  else:
    has_slot = "cls" in out
  return out, {"dialect": dialect, "posemb_has_cls_slot": has_slot}


def adapt_position_embedding(posemb: np.ndarray, *, has_slot: bool, model_has_cls: bool,
                             grid_hw: tuple[int, int], method: str) -> np.ndarray:
  """Returns the posemb for a model grid: class slot as the model needs, grid resized."""
  posemb = np.asarray(posemb, np.float32)
  if posemb.ndim == 2:
    posemb = posemb[None]
  grid = posemb[:, 1:] if has_slot else posemb
  cls_row = posemb[:, :1] if has_slot else np.zeros_like(posemb[:, :1])
  n = grid.shape[1]
  gs = int(round(np.sqrt(n)))
  if gs * gs != n:
    raise CheckpointError(f"position embedding with {n} grid tokens is not a square "
                          f"grid; cannot resize it to {grid_hw}")
  grid = resize.resize_grid(grid[0].reshape(gs, gs, -1), grid_hw, method)
  grid = grid.reshape(1, grid_hw[0] * grid_hw[1], -1)
  if model_has_cls:
    return np.concatenate([cls_row, grid], axis=1)
  return grid


def convert(arrays: dict[str, np.ndarray], template: dict[str, tuple[int, ...]], *,
            grid_hw: tuple[int, int], interpolation: str = "zoom") -> tuple[dict, dict]:
  """Converts a raw ViT npz dict to canonical names shaped like `template`.

  Args:
    arrays: the raw `.npz` contents.
    template: canonical name -> shape of the model's parameters.
    grid_hw: the model's patch grid.
    interpolation: posemb resize method (`zoom` = vit_jax/big_vision, `bilinear` = timm;
      `auto` = zoom).
  """
  interpolation = "zoom" if interpolation == "auto" else interpolation
  out, facts = to_canonical(arrays)
  model_has_cls = "cls" in template
  if POSEMB in out:
    out[POSEMB] = adapt_position_embedding(
        out[POSEMB], has_slot=facts["posemb_has_cls_slot"], model_has_cls=model_has_cls,
        grid_hw=grid_hw, method=interpolation)
  if not model_has_cls and "cls" in out:
    # A token-pooled checkpoint used with gap pooling: the class token is not used.
    out.pop("cls")
    facts["dropped"] = ["cls"]
  if "pre_logits/kernel" not in template:
    for k in ("pre_logits/kernel", "pre_logits/bias"):
      out.pop(k, None)
  return out, facts


def to_vit_jax(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """vit_jax on-disk arrays (pre-Linen block names) of a flat plain ViT parameter dict.

  The inverse of `convert` for a vit_jax file at the model's own grid; every array is
  a writable float32 copy (host copies of device arrays are read-only).
  """
  out = {}
  for key, value in params.items():
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = LINEN_TO_PRE_LINEN.get(parts[2], parts[2])
    out["/".join(parts)] = np.array(value, np.float32)
  return out



def read(path: Path) -> dict[str, np.ndarray]:
  """The arrays of a ViT `.npz`; CheckpointError for anything else."""
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path} is not an .npz (zip) archive; delete it if it is a "
                          "partial download and try again")
  try:
    return load_npz(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise CheckpointError(f"cannot read {path} as .npz ({e}); delete it if it is a "
                          "partial download and try again") from None


def convert_file(path: Path, *, template: dict, model, image_hw: tuple[int, int],
                 interpolation: str) -> tuple[dict, dict]:
  """A vit_jax / big_vision `.npz` -> canonical arrays for `model`."""
  p = model.patch_size
  return convert(read(path), template, grid_hw=(image_hw[0] // p, image_hw[1] // p),
                 interpolation=interpolation)


register_exporter("vit", Exporter(
    "merged.npz", lambda path, params: write_npz(path, to_vit_jax(params)),
    "vit_jax .npz (timm `_load_weights`, big_vision, heat_jax)"))
