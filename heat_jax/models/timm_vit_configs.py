"""timm's `VisionTransformer` architectures under their timm names.

`create_model('vit_small_patch14_dinov2', 10)` builds the heat_jax ViT (per-head
layout, vit_jax parameter names) with the geometry and numerics of that timm model:
exact GELU or QuickGELU, LayerNorm epsilon, LayerScale, registers, norm_pre, pooling.
Size fields can be overridden like any other (`num_layers`, `hidden_size`,
`num_heads`, `mlp_dim`), so tests build tiny variants of each architecture.

The family record `timm_vit` says: checkpoints are timm `.safetensors` (or Hugging
Face `ViTModel` / `Dinov2Model` files, or vit_jax `.npz`), merged exports are timm
state dicts, and `value_range='auto'` is the normalisation of the architecture's
pretrained weights (timm's `pretrained_cfg` mean/std).
"""

from __future__ import annotations

from typing import Any

from heat_jax.models.backbone import Family
from heat_jax.models.registry import register_model
from heat_jax.models.vit import ViT

# Sizes: (hidden, layers, heads); the MLP is 4x wide.
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "medium": (512, 12, 8),
          "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}
# timm's torch defaults: exact GELU, LayerNorm eps 1e-6 (CLIP: 1e-5).
_TIMM = dict(approximate_gelu=False, layer_norm_eps=1e-6)


def _register(name: str, size: str, patch: int, value_range: str, *, image: int = 224,
              **fields: Any) -> None:
  hidden, layers, heads = _SIZES[size]
  geometry = dict(patch_size=patch, hidden_size=hidden, num_layers=layers,
                  num_heads=heads, mlp_dim=4 * hidden, image_size=image)
  register_model(name, ViT, family=Family("timm_vit", value_range=value_range,
                                          source=f"timm {name}"),
                 **{**_TIMM, **geometry, **fields})


# Original / AugReg ViTs (Google): inception mean/std 0.5 = [-1, 1].
for _size, _patches in (("tiny", (16,)), ("small", (16, 32)), ("base", (8, 16, 32)),
                        ("large", (16, 32))):
  for _p in _patches:
    _register(f"vit_{_size}_patch{_p}_224", _size, _p, "minus1_1")
# DeiT (Facebook): ImageNet mean/std.
for _size in ("tiny", "small", "base"):
  _register(f"deit_{_size}_patch16_224", _size, 16, "imagenet")
# DINOv2: LayerScale, patch 14, trained at 518 px; reg4: 4 registers without posemb.
for _size in ("small", "base", "large"):
  _register(f"vit_{_size}_patch14_dinov2", _size, 14, "imagenet", image=518,
            layer_scale=1e-5)
  _register(f"vit_{_size}_patch14_reg4_dinov2", _size, 14, "imagenet", image=518,
            layer_scale=1e-5, num_registers=4, posemb_prefix=False)
# CLIP image towers (OpenAI / LAION): pre-norm, no patch bias, eps 1e-5; OpenAI's own
# weights were trained with QuickGELU (the *_quickgelu_* names).
_CLIP = dict(norm_pre=True, patch_bias=False, layer_norm_eps=1e-5)
for _size, _p in (("base", 16), ("base", 32), ("large", 14)):
  _register(f"vit_{_size}_patch{_p}_clip_224", _size, _p, "clip", **_CLIP)
  _register(f"vit_{_size}_patch{_p}_clip_quickgelu_224", _size, _p, "clip",
            activation="quick_gelu", **_CLIP)
# No class token, average pooling (final norm before the pooling, timm fc_norm=False).
_register("vit_base_patch16_gap_224", "base", 16, "minus1_1", classifier="gap",
          class_token=False, num_heads=16)
_register("vit_medium_patch16_gap_256", "medium", 16, "minus1_1", image=256,
          classifier="gap", class_token=False, qkv_bias=False, layer_scale=1e-6)
