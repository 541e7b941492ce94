"""Hugging Face transformers `ViTModel` / `Dinov2Model` weights -> heat_jax ViT params.

`params_from_hf(state, model)` takes a dict {HF name: np.ndarray} (a
`model.safetensors` of `save_pretrained`, or weights recovered from an ONNX export)
and returns the parameter tree of a heat_jax ViT (`create_model` with the matching
timm architecture, e.g. `vit_small_patch14_dinov2` for `facebook/dinov2-small`).
The names go through timm's layout (`to_timm`), so one converter
(`heat_jax.checkpoints.timm_vit`) does the per-head split for both:

  embeddings.cls_token / position_embeddings      cls_token / pos_embed
  embeddings.register_tokens (Dinov2WithRegisters) reg_token (the class token's
                                                  position row folded into it, as
                                                  timm converts DINOv2-reg)
  embeddings.patch_embeddings.projection          patch_embed.proj
  classifier.{weight,bias} (*ForImageClassification)   head.{weight,bias} (kept by
                                                  `load_pretrained` when its shapes fit:
                                                  an `export_hf` base loads as its run)
  embeddings.mask_token, pooler.*                 dropped (masked pre-training)
  encoder.layer.N.attention.attention.{query,key,value}   blocks.N.attn.qkv (stacked)
  encoder.layer.N.attention.output.dense          blocks.N.attn.proj
  Dinov2: norm1, norm2, mlp.fc1, mlp.fc2, layer_scale{1,2}.lambda1
  ViT:    layernorm_before, layernorm_after, intermediate.dense, output.dense
  layernorm                                       norm

Those are the file names (`save_pretrained` writes them in every version). The
in-memory names of transformers 5.x (what an ONNX export names the weights) are read
as well: `attention.{q,k,v}_proj`, `attention.o_proj`, and `layers.N.` for ViT
blocks.

Position embeddings: HF models interpolate at run time, so a file at another grid is
resized as that model computes it: `bicubic` (torch `F.interpolate(size=...,
mode='bicubic', align_corners=False)`, transformers 5.x), or `bicubic_legacy_hf`
(older Dinov2 code: `scale_factor=(n + 0.1) / N`); pass `interpolation=` to match
what an exported graph does. LayerNorm epsilon is not in the weights: build the
model with the checkpoint's `layer_norm_eps` (HF ViT configs default to 1e-12, DINOv2
to 1e-6).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import jax
import numpy as np

from heat_jax.errors import CheckpointError

RUNTIME_INTERPOLATION = "bicubic"   # transformers 5.x Dinov2 / ViT interpolate_pos_encoding
PATCH = "embeddings.patch_embeddings.projection.weight"
_PREFIXES = ("dinov2.", "vit.", "model.", "backbone.", "")
_LAYER = {
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
}
_QKV = {"attention.attention.query": "query", "attention.attention.key": "key",
        "attention.attention.value": "value", "attention.q_proj": "query",
        "attention.k_proj": "key", "attention.v_proj": "value"}
_DROPPED = ("embeddings.mask_token", "pooler.")
_CLASSIFIER = "classifier."   # *ForImageClassification: top level, beside the vit. prefix


def is_hf_vit(state: dict[str, Any]) -> bool:
  return any(f"{p}{PATCH}" in state for p in _PREFIXES)


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
  """Drops the `dinov2.` / `vit.` prefix of a *ForImageClassification file (its
  top-level `classifier.*` is kept as is)."""
  for prefix in _PREFIXES:
    if f"{prefix}{PATCH}" in state:
      out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
      out.update({k: v for k, v in state.items() if k.startswith(_CLASSIFIER)})
      return out
  raise CheckpointError(f"no '{PATCH}': this is not a Hugging Face ViTModel / Dinov2Model "
                        "state dict")


def to_timm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF ViT / Dinov2 names -> timm `VisionTransformer` names (values unchanged except
  the stacked qkv and the register fold). Unknown names are kept, so the loader's
  mismatch report shows them (e.g. Dinov2's SwiGLU `mlp.weights_in`)."""
  state = {k: np.asarray(v) for k, v in strip_prefix(state).items()}
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[int, str], dict[str, np.ndarray]] = {}
  for key, value in state.items():
    if key.startswith(_DROPPED):
      continue
    if key in ("classifier.weight", "classifier.bias"):
      out["head." + key.rsplit(".", 1)[1]] = value   # same Linear layout as timm's head
    elif key == "embeddings.cls_token":
      out["cls_token"] = value
    elif key == "embeddings.position_embeddings":
      out["pos_embed"] = value
    elif key == "embeddings.register_tokens":
      out["reg_token"] = value
    elif key.startswith("embeddings.patch_embeddings.projection."):
      out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
    elif key.startswith("layernorm."):
      out["norm." + key.rsplit(".", 1)[1]] = value
    else:
      m = re.match(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
      if not m:
        out[key] = value
        continue
      i, module, leaf = int(m.group(1)), m.group(2), m.group(3)
      if module in _QKV:
        qkv.setdefault((i, leaf), {})[_QKV[module]] = value
      elif module in ("layer_scale1", "layer_scale2"):
        out[f"blocks.{i}.ls{module[-1]}.gamma"] = value
      elif module in _LAYER:
        out[f"blocks.{i}.{_LAYER[module]}.{leaf}"] = value
      else:
        out[key] = value
  for (i, leaf), parts in sorted(qkv.items()):
    missing = [p for p in ("query", "key", "value") if p not in parts]
    if missing:
      raise CheckpointError(f"layer {i}: attention {leaf} of {missing} missing")
    out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(
        [parts["query"], parts["key"], parts["value"]], axis=0)
  if "reg_token" in out and "pos_embed" in out:
    # Dinov2WithRegisters embeds [cls, patches] and inserts the registers after; timm's
    # no_embed_class layout has no class row: fold it into the class token (exact).
    pos = out["pos_embed"]
    out["cls_token"] = out["cls_token"] + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
  return out


def params_from_hf(state: dict[str, np.ndarray], model: Any, *,
                   image_size: Optional[int | tuple[int, int]] = None,
                   interpolation: str = "auto", rng: Optional[jax.Array] = None) -> dict:
  """The parameter tree of `model` from HF ViT / Dinov2 weights {name: array}.

  Args:
    state: HF parameter names -> arrays (`safetensors.numpy.load_file`, ONNX
      initializers, ...).
    model: a heat_jax ViT of the same architecture (`create_model`).
    image_size: the size the model runs at (default `model.image_size`).
    interpolation: posemb resize: `auto` = `bicubic` (what transformers 5.x computes at
      run time), `bicubic_legacy_hf`, or any of `heat_jax.resize.METHODS`.
    rng: initialises the classifier and extension parameters (a file's classifier is
      not used here; `load_pretrained` keeps one that fits).

  Raises:
    CheckpointError: listing every missing, unexpected and wrong-shaped parameter.
  """
  from heat_jax import checkpoints   # the package imports this module
  from heat_jax.checkpoints import timm_vit
  hw = checkpoints.image_hw(model, image_size)
  grid = (hw[0] // model.patch_size, hw[1] // model.patch_size)

  def convert(template):
    return timm_vit.convert(to_timm(state), template, grid_hw=grid,
                            interpolation=interpolation, auto_method=RUNTIME_INTERPOLATION)

  return checkpoints.load_converted(convert, model, image_size=image_size, rng=rng,
                                    source="Hugging Face state dict")
