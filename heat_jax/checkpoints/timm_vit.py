"""timm `VisionTransformer` state dicts <-> canonical ViT names (the per-head layout).

Reading (`to_canonical`, `convert`):
  patch_embed.proj.{weight,bias}     -> embedding/{kernel,bias}   (O,I,kh,kw) -> (kh,kw,I,O)
  cls_token, reg_token               -> cls, registers
  pos_embed                          -> Transformer/posembed_input/pos_embedding (resized)
  norm_pre                           -> Transformer/norm_pre
  blocks.{i}.norm1 / norm2           -> Transformer/encoderblock_{i}/LayerNorm_0 / _1
  blocks.{i}.attn.qkv (3D, D)        -> .../MultiHeadDotProductAttention_0/{query,key,value}
                                        kernel [D, heads, head_dim] (W.T split as timm's
                                        reshape (B, N, 3, H, hd)), bias [heads, head_dim]
  blocks.{i}.attn.proj (D, D)        -> .../out kernel [heads, head_dim, D]
  blocks.{i}.ls1.gamma / ls2.gamma   -> .../LayerScale_0/scale / LayerScale_1/scale
  blocks.{i}.mlp.fc1 / fc2           -> .../MlpBlock_0/Dense_0 / Dense_1
  norm / fc_norm                     -> Transformer/encoder_norm / fc_norm
  head.{weight,bias} (Linear)        -> head/{kernel,bias}: `load_pretrained` keeps it when
                                        its shapes fit the model (a merged export loads as
                                        its run); training runs always start a fresh head
  head_drop.*, other head.*          -> dropped

The position embedding is resized the way timm does on load (`checkpoint_filter_fn`:
prefix rows kept apart, the grid resampled bicubic with antialias; `bicubic_aa`
here) unless another method is asked for. `to_timm` is the way back: the merged
export of a `timm_vit` model (`merged.safetensors`) is a state dict timm's
`VisionTransformer.load_state_dict` takes as is.

Files: `convert_file` reads any ViT file for the `vit` and `timm_vit` families:
vit_jax / big_vision `.npz`, timm `.safetensors` / `.pth`, and Hugging Face
`ViTModel` / `Dinov2Model` files (`heat_jax.checkpoints.hf_vit`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from heat_jax import resize
from heat_jax.checkpoints import hf_vit, state_dict, vit_npz
from heat_jax.checkpoints.formats import Exporter, register_converter, register_exporter
from heat_jax.checkpoints.registry import CheckpointInfo, register_checkpoint
from heat_jax.errors import CheckpointError

POSEMB = vit_npz.POSEMB
ATTN = "MultiHeadDotProductAttention_0"
_BLOCK = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "mlp.fc1": "MlpBlock_0/Dense_0",
          "mlp.fc2": "MlpBlock_0/Dense_1", "ls1": "LayerScale_0", "ls2": "LayerScale_1"}
_TOP = {"patch_embed.proj": "embedding", "norm_pre": "Transformer/norm_pre",
        "norm": "Transformer/encoder_norm", "fc_norm": "fc_norm"}
_DROPPED = ("head.", "head_drop.", "mask_token")
_HEAD = {"head.weight": "head/kernel", "head.bias": "head/bias"}   # timm's Linear classifier


def is_timm_vit(state: dict[str, Any]) -> bool:
  return "patch_embed.proj.weight" in state and any(k.startswith("blocks.") for k in state)


def _leaf(module_path: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A (canonical name, array) for a plain timm parameter `module.leaf`."""
  if leaf == "gamma":                                  # LayerScale
    return f"{module_path}/scale", value
  if leaf == "weight" and value.ndim == 4:             # conv
    return f"{module_path}/kernel", np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if leaf == "weight" and value.ndim == 2:             # Linear
    return f"{module_path}/kernel", np.ascontiguousarray(value.T)
  if leaf == "weight":                                 # LayerNorm
    return f"{module_path}/scale", value
  return f"{module_path}/{leaf}", value


def to_canonical(state: dict[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """Renames a timm ViT state dict to canonical names (no resizing; a Linear head is
  `head/*`, for the loader to keep or drop)."""
  if not is_timm_vit(state):
    raise CheckpointError("this file has no 'patch_embed.proj.weight' / 'blocks.*' keys: "
                          "it is not a timm VisionTransformer state dict")
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32)
    if key in _HEAD and value.ndim == (2 if key.endswith("weight") else 1):
      out[_HEAD[key]] = value.T if value.ndim == 2 else value   # Linear (out, in) -> Dense
      continue
    if key.startswith(_DROPPED):
      continue
    if key in ("cls_token", "reg_token", "pos_embed"):
      out[{"cls_token": "cls", "reg_token": "registers", "pos_embed": POSEMB}[key]] = value
      continue
    m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
    if m:
      i, module, leaf = int(m.group(1)), m.group(2), m.group(3)
      block = f"Transformer/encoderblock_{i}"
      if module == "attn.qkv":
        _split_qkv(out, f"{block}/{ATTN}", leaf, value, num_heads)
      elif module == "attn.proj":
        if leaf == "weight":   # (D, H hd) -> [H, hd, D]
          out[f"{block}/{ATTN}/out/kernel"] = np.ascontiguousarray(
              value.T.reshape(num_heads, -1, value.shape[0]))
        else:
          out[f"{block}/{ATTN}/out/bias"] = value
      elif module in _BLOCK:
        name, arr = _leaf(f"{block}/{_BLOCK[module]}", leaf, value)
        out[name] = arr
      else:
        out[key] = value   # e.g. attn.q_norm: not implemented, shown as unexpected
      continue
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
      name, arr = _leaf(_TOP[module], leaf, value)
      out[name] = arr
    else:
      out[key] = value     # unknown: the mismatch report names it
  return out


def _split_qkv(out: dict, attn: str, leaf: str, value: np.ndarray, heads: int) -> None:
  if leaf == "weight":   # (3 H hd, D) -> (D, 3, H, hd)
    w = value.T.reshape(value.shape[1], 3, heads, -1)
    for i, name in enumerate(("query", "key", "value")):
      out[f"{attn}/{name}/kernel"] = np.ascontiguousarray(w[:, i])
  else:
    b = value.reshape(3, heads, -1)
    for i, name in enumerate(("query", "key", "value")):
      out[f"{attn}/{name}/bias"] = b[i]


def resample_posemb(posemb: np.ndarray, prefix_rows: int, grid_hw: tuple[int, int],
                    method: str) -> np.ndarray:
  """[1, prefix + n*n, D] -> [1, prefix + h*w, D]: prefix rows kept, the grid resized."""
  posemb = np.asarray(posemb, np.float32)
  prefix, grid = posemb[:, :prefix_rows], posemb[:, prefix_rows:]
  n = grid.shape[1]
  gs = int(round(np.sqrt(n)))
  if gs * gs != n:
    raise CheckpointError(f"position embedding with {n} grid rows (after {prefix_rows} "
                          f"prefix rows) is not a square grid; cannot resize it to "
                          f"{grid_hw}")
  if (gs, gs) == tuple(grid_hw) and method != "bicubic_legacy_hf":
    return posemb
  grid = resize.resize_grid(grid[0].reshape(gs, gs, -1), grid_hw, method)
  return np.concatenate([prefix, grid.reshape(1, grid_hw[0] * grid_hw[1], -1)], axis=1)


def convert(state: dict[str, np.ndarray], template: dict[str, tuple[int, ...]], *,
            grid_hw: tuple[int, int], interpolation: str = "auto",
            auto_method: str = "bicubic_aa") -> tuple[dict, dict]:
  """A timm ViT state dict -> canonical arrays shaped like `template`.

  Args:
    state: the state dict (numpy).
    template: canonical name -> shape of the model's parameters.
    grid_hw: the model's patch grid.
    interpolation: posemb resize method (`heat_jax.resize.METHODS`); `auto` is
      `auto_method` (timm's load: `bicubic_aa`).
  """
  method = auto_method if interpolation == "auto" else interpolation
  key = next((k for k in template if k.endswith(f"/{ATTN}/query/kernel")), None)
  if key is None:
    raise CheckpointError("the model has no ViT attention blocks to load a timm ViT into")
  out = to_canonical(state, int(template[key][1]))
  facts: dict[str, Any] = {"format": "timm", "interpolation": method}
  if POSEMB in out and POSEMB in template:
    prefix_rows = template[POSEMB][1] - grid_hw[0] * grid_hw[1]
    if out[POSEMB].shape != template[POSEMB]:
      out[POSEMB] = resample_posemb(out[POSEMB], prefix_rows, grid_hw, method)
      facts["resized"] = True
  return out, facts


def convert_file(path: Path, *, template: dict, model: Any, image_hw: tuple[int, int],
                 interpolation: str) -> tuple[dict, dict]:
  """Any ViT file -> canonical arrays: `.npz` (vit_jax, big_vision), a timm / Hugging
  Face state dict (`.safetensors`, `.pth`, `.bin`), or an ONNX graph of a Hugging Face
  model (`.onnx`, `onnx_vit`: resized as that graph resizes)."""
  if Path(path).suffix == ".npz":
    return vit_npz.convert_file(path, template=template, model=model, image_hw=image_hw,
                                interpolation=interpolation)
  grid = (image_hw[0] // model.patch_size, image_hw[1] // model.patch_size)
  if Path(path).suffix.lower() == ".onnx":   # a PyTorch export of a HF Dinov2Model / ViT
    from heat_jax.checkpoints import onnx_vit
    state, method = onnx_vit.hf_state(path, model)   # method: the graph's posemb resize
    return convert(hf_vit.to_timm(state), template, grid_hw=grid,
                   interpolation=interpolation, auto_method=method)
  state = state_dict.read(path, "ViT", "vit_jax / big_vision .npz, timm or Hugging Face "
                          ".safetensors, or torch .pth / .bin, or ONNX .onnx")
  if hf_vit.is_hf_vit(state):
    state, method = hf_vit.to_timm(state), hf_vit.RUNTIME_INTERPOLATION
  else:
    method = "bicubic_aa"
  return convert(state, template, grid_hw=grid, interpolation=interpolation,
                 auto_method=method)


register_converter("vit", convert_file, ("auto",) + resize.METHODS)
register_converter("timm_vit", convert_file, ("auto",) + resize.METHODS)


# ----------------------------------------------------------------------------- exporting

_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_TOP_BACK = {v: k for k, v in _TOP.items()}


def to_timm(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `to_canonical` for a flat plain ViT parameter dict (head included).

  Per-head query/key/value [D, H, hd] fuse into `qkv.weight` [3 H hd, D] (row
  p H hd + h hd + d = part p, head h, channel d); out [H, hd, D] becomes `proj.weight`.
  """
  flat = {k: np.asarray(v, np.float32) for k, v in params.items()}
  out: dict[str, np.ndarray] = {}
  for key, value in flat.items():
    path, _, leaf = key.rpartition("/")
    if key in ("cls", "registers", POSEMB):
      out[{"cls": "cls_token", "registers": "reg_token", POSEMB: "pos_embed"}[key]] = value
      continue
    m = re.match(r"Transformer/encoderblock_(\d+)/(.+)$", path)
    if m:
      block, module = f"blocks.{m.group(1)}", m.group(2)
      if module.startswith(f"{ATTN}/"):
        part = module[len(ATTN) + 1:]
        if part in ("query", "key", "value"):
          if part == "query":
            _fuse_qkv(out, flat, f"Transformer/encoderblock_{m.group(1)}/{ATTN}",
                      f"{block}.attn.qkv", leaf)
        elif part == "out" and leaf == "kernel":
          out[f"{block}.attn.proj.weight"] = value.reshape(-1, value.shape[-1]).T
        elif part == "out":
          out[f"{block}.attn.proj.bias"] = value
        else:
          raise _not_exportable(key)
        continue
      if module not in _BLOCK_BACK:
        raise _not_exportable(key)
      out[_timm_leaf(f"{block}.{_BLOCK_BACK[module]}", leaf, value, module)] = (
          _timm_value(leaf, value))
      continue
    if path == "head" or path in _TOP_BACK:
      name = "head" if path == "head" else _TOP_BACK[path]
      out[_timm_leaf(name, leaf, value, path)] = _timm_value(leaf, value)
      continue
    raise _not_exportable(key)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _fuse_qkv(out: dict, flat: dict, attn: str, name: str, leaf: str) -> None:
  parts = [flat[f"{attn}/{p}/{leaf}"] for p in ("query", "key", "value")]
  if leaf == "kernel":   # 3 x [D, H, hd] -> [D, 3, H, hd] -> [3 H hd, D]
    out[f"{name}.weight"] = np.stack(parts, 1).reshape(parts[0].shape[0], -1).T
  else:
    out[f"{name}.bias"] = np.stack(parts).reshape(-1)


def _timm_leaf(module: str, leaf: str, value: np.ndarray, canonical: str) -> str:
  if "LayerScale" in canonical:
    return f"{module}.gamma"
  return f"{module}.{'bias' if leaf == 'bias' else 'weight'}"


def _timm_value(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:    # (kh, kw, I, O) -> (O, I, kh, kw)
    return value.transpose(3, 2, 0, 1)
  if leaf == "kernel" and value.ndim == 2:    # Dense (in, out) -> Linear (out, in)
    return value.T
  return value


def _not_exportable(key: str) -> CheckpointError:
  return CheckpointError(f"cannot export parameter {key} in timm's ViT layout (merge the "
                         "method's extensions first)")


def write_timm_safetensors(path: str | os.PathLike, params: dict[str, np.ndarray]) -> None:
  """Writes `to_timm(params)` as `.safetensors`, atomically."""
  state_dict.write_safetensors(path, to_timm(params))


register_exporter("timm_vit", Exporter("merged.safetensors", write_timm_safetensors,
                                       "timm VisionTransformer state dict (.safetensors)"))


# ----------------------------------------------------------------------------- names



def _hub(tag: str, model: str, value_range: str, note: str, *aliases: str,
         repo_tag: str = "") -> None:
  """A timm Hub checkpoint `timm/<arch>.<tag>` (also `hf-hub:timm/<arch>.<tag>`)."""
  repo_tag = repo_tag or tag
  register_checkpoint(CheckpointInfo(
      name=f"timm/{tag}", family="timm_vit", path=f"timm_vit/{repo_tag}/model.safetensors",
      base_env="HEAT_JAX_TIMM_URL", default_base=state_dict.TIMM_HF_URL, model=model, note=note,
      url_path=f"{repo_tag}/resolve/main/model.safetensors", hf_repo=f"timm/{repo_tag}",
      hf_filename="model.safetensors", value_range=value_range),
      f"hf-hub:timm/{tag}", tag, *aliases)


# The backbones of the PETL releases and the self-supervised / CLIP towers users
# start from (preprocessing: timm's pretrained_cfg mean/std of each tag).
_hub("vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224", "minus1_1",
     "AugReg ImageNet-21k (AFeng-x/HST's backbone; 21843-class head not used)")
_hub("vit_base_patch16_224.orig_in21k", "vit_base_patch16_224", "minus1_1",
     "original ImageNet-21k ViT-B/16 (VPT, NOAH, FacT), converted by timm")
for _size in ("small", "base", "large"):
  _hub(f"vit_{_size}_patch14_dinov2.lvd142m", f"vit_{_size}_patch14_dinov2", "imagenet",
       "DINOv2 LVD-142M, self-supervised, 518 px (resampled to the run's size)")
  _hub(f"vit_{_size}_patch14_reg4_dinov2.lvd142m", f"vit_{_size}_patch14_reg4_dinov2",
       "imagenet", "DINOv2 with 4 registers, LVD-142M, 518 px")
for _p in (16, 32):
  # OpenAI trained with QuickGELU: the *_quickgelu_* model reproduces it; timm keeps the
  # files under the plain name (whose model uses exact GELU, as timm's does).
  _hub(f"vit_base_patch{_p}_clip_quickgelu_224.openai",
       f"vit_base_patch{_p}_clip_quickgelu_224", "clip",
       f"OpenAI CLIP ViT-B/{_p} image tower (QuickGELU; KAdaptation's backbone is B/32)",
       repo_tag=f"vit_base_patch{_p}_clip_224.openai")
  _hub(f"vit_base_patch{_p}_clip_224.openai", f"vit_base_patch{_p}_clip_224", "clip",
       f"OpenAI CLIP ViT-B/{_p} under timm's GELU model (natively QuickGELU: prefer "
       f"timm/vit_base_patch{_p}_clip_quickgelu_224.openai)")
for _size in ("small", "base"):
  _hub(f"deit_{_size}_patch16_224.fb_in1k", f"deit_{_size}_patch16_224", "imagenet",
       "DeiT ImageNet-1k (Facebook)")
