"""Swin checkpoints: timm `.safetensors` and Microsoft `.pth` files -> canonical names.

Canonical names are those of `heat_jax.models.swin` (timm's current layout: patch
merging at the start of stage s >= 1). Handled here:
  * the original Microsoft layout (`layers.{s}.downsample` at the end of stage s,
    classifier `head.*`): downsample moved to stage s + 1;
  * fused `qkv` / `proj` Linear layers -> per-head query/key/value/out kernels;
  * buffers (`relative_position_index`, `attn_mask`) skipped; the classifier `head.fc`
    becomes `head/*` (kept by `load_pretrained` when its class count fits);
  * relative position bias tables resized when the model's window differs.

`to_timm` is the way back: canonical parameters (extensions merged) -> a state dict
that `timm`'s `SwinTransformer.load_state_dict` takes as is (`write_timm_safetensors`:
`merged.safetensors` of a Swin run). Buffers are not written: current timm registers
`relative_position_index` and `attn_mask` as non-persistent and recomputes them.

Table resizing: `bicubic` (the default; Microsoft's fine-tuning code, torch
`F.interpolate(mode='bicubic', align_corners=False)`), `bilinear`, or `geometric`
(what current timm's `checkpoint_filter_fn` does: piecewise-linear interpolation on
the geometrically spaced grid of BEiT). `load_pretrained`'s ViT default `zoom` means
`bicubic` here.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from heat_jax import resize
from heat_jax.checkpoints import state_dict
from heat_jax.checkpoints.formats import Exporter, register_converter, register_exporter
from heat_jax.checkpoints.registry import CheckpointInfo, register_checkpoint
from heat_jax.errors import CheckpointError

TABLE = "relative_position_bias_table"
TABLE_METHODS = ("bicubic", "bilinear", "geometric")
_BUFFERS = ("relative_position_index", "attn_mask")


# ----------------------------------------------------------------------------- reading

def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a timm `.safetensors` (numpy only) or a Microsoft/timm `.pth` (needs torch)."""
  return state_dict.read(path, "Swin", "timm .safetensors or Microsoft/timm .pth")


# ----------------------------------------------------------------------------- renaming

def is_microsoft_layout(state: dict[str, Any]) -> bool:
  """True for the original layout (stage 0 has a downsample), as timm decides."""
  return "layers.0.downsample.reduction.weight" in state


def to_timm_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Moves `layers.{s}.downsample` to s + 1 and `head.` to `head.fc.` (old files only)."""
  if not is_microsoft_layout(state):
    return dict(state)
  out = {}
  for key, value in state.items():
    key = re.sub(r"^layers\.(\d+)\.downsample\.",
                 lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
    if key.startswith("head.") and not key.startswith("head.fc."):
      key = "head.fc." + key[len("head."):]
    out[key] = value
  return out


def _flax_path(module: str) -> str:
  module = re.sub(r"(layers|blocks)\.(\d+)", r"\1_\2", module)
  return module.replace(".", "/")


def to_canonical(state: dict[str, np.ndarray], template: dict[str, tuple[int, ...]] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict]:
  """Renames a timm/Microsoft Swin state dict to canonical Flax names (no resizing).

  Returns the arrays and facts: `layout` ('timm' or 'microsoft') and `dropped`
  (buffers and unknown `head.*` keys).
  """
  if "patch_embed.proj.weight" not in state or not any(k.startswith("layers.") for k in state):
    raise CheckpointError("this file has no 'patch_embed.proj.weight' / 'layers.*' keys: it "
                          "is not a Swin checkpoint in the timm or Microsoft layout")
  layout = "microsoft" if is_microsoft_layout(state) else "timm"
  state = to_timm_layout(state)
  template = template or {}
  out: dict[str, np.ndarray] = {}
  dropped = []
  for key, value in state.items():
    value = np.asarray(value)
    if key in ("head.fc.weight", "head.fc.bias"):   # the classifier: kept when it fits
      out["head/kernel" if key.endswith("weight") else "head/bias"] = (
          np.ascontiguousarray(value.T) if key.endswith("weight") else value)
      continue
    if key.startswith("head.") or any(key.endswith(b) for b in _BUFFERS):
      dropped.append(key)
      continue
    module, _, leaf = key.rpartition(".")
    path = _flax_path(module)
    if module.endswith(".attn.qkv"):
      attn = path[:-len("/qkv")]
      heads = _num_heads(state, module[:-len(".qkv")], attn, template)
      if leaf == "weight":  # (3 * H * hd, C) -> (C, 3, H, hd)
        w = value.T.reshape(value.shape[1], 3, heads, -1)
        for i, name in enumerate(("query", "key", "value")):
          out[f"{attn}/{name}/kernel"] = np.ascontiguousarray(w[:, i])
      else:
        b = value.reshape(3, heads, -1)
        for i, name in enumerate(("query", "key", "value")):
          out[f"{attn}/{name}/bias"] = b[i]
      continue
    if module.endswith(".attn.proj"):
      attn = path[:-len("/proj")]
      heads = _num_heads(state, module[:-len(".proj")], attn, template)
      if leaf == "weight":  # (C, H * hd) -> (H, hd, C)
        out[f"{attn}/out/kernel"] = np.ascontiguousarray(value.T.reshape(heads, -1,
                                                                         value.shape[0]))
      else:
        out[f"{attn}/out/bias"] = value
      continue
    if leaf == TABLE:
      out[f"{path}/{TABLE}"] = value
    elif leaf == "weight" and value.ndim == 4:  # conv (O, I, kh, kw) -> (kh, kw, I, O)
      out[f"{path}/kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    elif leaf == "weight" and value.ndim == 2:  # linear (out, in) -> (in, out)
      out[f"{path}/kernel"] = np.ascontiguousarray(value.T)
    elif leaf == "weight" and value.ndim == 1:  # LayerNorm
      out[f"{path}/scale"] = value
    elif leaf == "bias":
      out[f"{path}/bias"] = value
    else:  # unknown: keep the name so the mismatch report shows it
      out[key] = value
  out = {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
         for k, v in out.items()}
  return out, {"layout": layout, "dropped": dropped}


def _num_heads(state: dict[str, np.ndarray], timm_attn: str, flax_attn: str,
               template: dict[str, tuple[int, ...]]) -> int:
  table = state.get(f"{timm_attn}.{TABLE}")
  if table is not None:
    return int(np.shape(table)[1])
  shape = template.get(f"{flax_attn}/query/kernel")
  if shape is not None:
    return int(shape[1])
  raise CheckpointError(f"cannot tell the number of heads of {timm_attn}: no {TABLE} in "
                        "the file and no such block in the model")


# ----------------------------------------------------------------------------- resizing

def resize_bias_table(table: np.ndarray, new_len: int, method: str = "bicubic") -> np.ndarray:
  """Resizes a square-window table [(2w-1)^2, H] to [new_len, H]."""
  if method not in TABLE_METHODS:
    raise ValueError(f"unknown table resize method {method!r}; use one of {TABLE_METHODS}")
  table = np.asarray(table, np.float32)
  src, dst = _side(table.shape[0]), _side(new_len)
  grid = table.reshape(src, src, -1)
  if method == "geometric":
    w = geometric_interp_matrix(src, dst)
    out = np.einsum("ih,hwc->iwc", w, grid.astype(np.float64))
    out = np.einsum("jw,iwc->ijc", w, out).astype(np.float32)
  else:
    out = resize.resize_grid(grid, (dst, dst), method)
  return out.reshape(dst * dst, -1)


def _side(length: int) -> int:
  side = math.isqrt(length)
  if side * side != length or side % 2 == 0:
    raise CheckpointError(f"relative position table with {length} rows is not a square "
                          "(2w-1) x (2w-1) table; cannot resize it")
  return side


def geometric_interp_matrix(src: int, dst: int) -> np.ndarray:
  """[dst, src] weights of timm's `resize_rel_pos_bias_table` along one axis.

  The source offsets are placed on a geometric grid that spans the target offsets
  (BEiT); the targets are read off by linear interpolation, clamped at the ends.
  """
  half_src, half_dst = src // 2, dst // 2
  lo, hi = 1.01, 1.5
  while hi - lo > 1e-6:
    q = (lo + hi) / 2.0
    if (1.0 - q ** half_src) / (1.0 - q) > half_dst:
      hi = q
    else:
      lo = q
  dis, cur = [], 1.0
  for i in range(half_src):
    dis.append(cur)
    cur += q ** (i + 1)
  points = np.asarray([-d for d in reversed(dis)] + [0.0] + dis, np.float32)
  targets = np.arange(-half_dst, half_dst + 0.1, 1.0, dtype=np.float32)
  weights = np.zeros((dst, src), np.float64)
  for i, x in enumerate(targets):
    right = min(int(np.searchsorted(points, x, side="left")), src - 1)
    left = max(right - 1, 0)
    d_left = max(float(x - points[left]), 0.0)
    d_right = max(float(points[right] - x), 0.0)
    if d_left == 0.0 and d_right == 0.0:
      d_left = d_right = 1.0
    weights[i, left] += d_right / (d_left + d_right)
    weights[i, right] += d_left / (d_left + d_right)
  return weights


def convert(state: dict[str, np.ndarray], template: dict[str, tuple[int, ...]], *,
            interpolation: str = "bicubic") -> tuple[dict[str, np.ndarray], dict]:
  """Converts a raw Swin state dict to canonical names shaped like `template`.

  Args:
    state: timm (current) or Microsoft (original) state dict as numpy arrays.
    template: canonical name -> shape of the model's parameters.
    interpolation: bias-table resize method (`bicubic`, `bilinear`, `geometric`;
      `zoom` and `auto` mean `bicubic`).
  """
  method = "bicubic" if interpolation in ("zoom", "auto") else interpolation
  if method not in TABLE_METHODS:
    raise CheckpointError(f"Swin bias tables resize with one of {TABLE_METHODS}, not "
                          f"{interpolation!r}")
  out, facts = to_canonical(state, template)
  resized = []
  for key in sorted(out):
    if not key.endswith(f"/{TABLE}") or key not in template:
      continue
    new_len, heads = template[key]
    if out[key].shape != (new_len, heads) and out[key].shape[1] == heads:
      out[key] = resize_bias_table(out[key], new_len, method)
      resized.append(key)
  facts["resized"] = resized
  return out, facts


def _convert_swin(path: Path, *, template: dict, model: Any, image_hw: tuple[int, int],
                  interpolation: str) -> tuple[dict, dict]:
  del model, image_hw  # the template carries every shape the tables need
  return convert(load_state_dict(path), template, interpolation=interpolation)


register_converter("swin", _convert_swin, ("auto", "zoom") + TABLE_METHODS)


# ----------------------------------------------------------------------------- exporting

def _timm_module(path: str) -> str:
  return re.sub(r"(layers|blocks)_(\d+)", r"\1.\2", path).replace("/", ".")


def to_timm(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `to_canonical` (timm layout) for a flat plain Swin parameter dict.

  Per-head query/key/value kernels [C, H, hd] fuse into `qkv.weight` [3 H hd, C] (row
  p H hd + h hd + d = part p, head h, channel d, as timm splits it); the out kernel
  [H, hd, C] becomes `proj.weight` [C, H hd]; the classifier becomes `head.fc`.
  """
  flat = {k: np.asarray(v, np.float32) for k, v in params.items()}
  out: dict[str, np.ndarray] = {}
  done: set[str] = set()
  for key in sorted(flat):
    if key in done:
      continue
    path, _, leaf = key.rpartition("/")
    value = flat[key]
    if path.endswith("/attn/query") or path.endswith("/attn/key") or path.endswith("/attn/value"):
      attn = path.rpartition("/")[0]
      parts = [flat[f"{attn}/{p}/{leaf}"] for p in ("query", "key", "value")]
      done.update(f"{attn}/{p}/{leaf}" for p in ("query", "key", "value"))
      name = f"{_timm_module(attn)}.qkv"
      if leaf == "kernel":   # 3 x [C, H, hd] -> [C, 3, H, hd] -> [3 H hd, C]
        out[f"{name}.weight"] = np.stack(parts, 1).reshape(parts[0].shape[0], -1).T
      else:                  # 3 x [H, hd] -> [3 H hd]
        out[f"{name}.bias"] = np.stack(parts).reshape(-1)
      continue
    name = "head.fc" if path == "head" else _timm_module(path)
    if path.endswith("/attn/out") and leaf == "kernel":   # [H, hd, C] -> [C, H hd]
      out[f"{_timm_module(path[:-len('/out')])}.proj.weight"] = value.reshape(-1, value.shape[-1]).T
    elif path.endswith("/attn/out"):
      out[f"{_timm_module(path[:-len('/out')])}.proj.bias"] = value
    elif leaf == TABLE:
      out[f"{name}.{TABLE}"] = value
    elif leaf == "kernel" and value.ndim == 4:   # conv (kh, kw, I, O) -> (O, I, kh, kw)
      out[f"{name}.weight"] = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and value.ndim == 2:   # Dense (in, out) -> Linear (out, in)
      out[f"{name}.weight"] = value.T
    elif leaf == "scale":
      out[f"{name}.weight"] = value
    elif leaf == "bias":
      out[f"{name}.bias"] = value
    else:
      raise CheckpointError(f"cannot export parameter {key} in timm's Swin layout (merge "
                            "the method's extensions first)")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_timm_safetensors(path: str | os.PathLike, params: dict[str, np.ndarray]) -> None:
  """Writes `to_timm(params)` as `.safetensors`, atomically."""
  state_dict.write_safetensors(path, to_timm(params))


register_exporter("swin", Exporter("merged.safetensors", write_timm_safetensors,
                                   "timm SwinTransformer state dict (.safetensors)"))


# ----------------------------------------------------------------------------- names

MICROSOFT_URL = "https://github.com/SwinTransformer/storage/releases/download"


def _timm(tag: str, model: str, note: str, *aliases: str) -> None:
  register_checkpoint(CheckpointInfo(
      name=f"timm/{tag}", family="swin", path=f"swin/{tag}/model.safetensors",
      base_env="HEAT_JAX_SWIN_URL", default_base=state_dict.TIMM_HF_URL, model=model, note=note,
      url_path=f"{tag}/resolve/main/model.safetensors", hf_repo=f"timm/{tag}",
      hf_filename="model.safetensors", value_range="imagenet"), tag, *aliases)


_timm("swin_base_patch4_window7_224.ms_in22k", "Swin-B",
      "ImageNet-22k pre-training (the PETL papers' Swin-B)", "Swin-B", "Swin-B_22k")
_timm("swin_large_patch4_window7_224.ms_in22k", "Swin-L", "ImageNet-22k pre-training",
      "Swin-L", "Swin-L_22k")
_timm("swin_tiny_patch4_window7_224.ms_in1k", "Swin-T", "ImageNet-1k", "Swin-T",
      "Swin-T_1k")
_timm("swin_small_patch4_window7_224.ms_in1k", "Swin-S", "ImageNet-1k", "Swin-S",
      "Swin-S_1k")
_timm("swin_base_patch4_window7_224.ms_in1k", "Swin-B", "ImageNet-1k", "Swin-B_1k")

register_checkpoint(CheckpointInfo(
    name="microsoft/swin_base_patch4_window7_224_22k", family="swin",
    path="swin/microsoft/swin_base_patch4_window7_224_22k.pth",
    base_env="HEAT_JAX_SWIN_MS_URL", default_base=MICROSOFT_URL, model="Swin-B",
    note="original Microsoft release, ImageNet-22k (torch pickle; needs torch)",
    url_path="v1.0.0/swin_base_patch4_window7_224_22k.pth", value_range="imagenet"),
    "swin_base_patch4_window7_224_22k")
