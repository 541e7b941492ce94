"""Named ViT configurations (vit_jax names) and tiny test configurations."""

from heat_jax.models.backbone import Family
from heat_jax.models.registry import register_model
from heat_jax.models.vit import ViT

# vit_jax / big_vision files, inputs in [-1, 1]; config.model.classifier picks pooling.
VIT_JAX = Family("vit", value_range="minus1_1", config_fields=("classifier",),
                 source="vit_jax")

# name: (hidden, layers, heads, mlp)
_SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}

for _size, _patches in (("Ti", (16, 32)), ("S", (16, 32)), ("B", (8, 16, 32)),
                        ("L", (16, 32)), ("H", (14,))):
  _hidden, _layers, _heads, _mlp = _SIZES[_size]
  for _p in _patches:
    register_model(f"ViT-{_size}_{_p}", ViT, family=VIT_JAX, patch_size=_p, hidden_size=_hidden,
                   num_layers=_layers, num_heads=_heads, mlp_dim=_mlp, image_size=224)

# Tiny configurations for tests and the offline demo (32x32 images).
register_model("ViT-tiny", ViT, family=VIT_JAX, patch_size=4, hidden_size=64, num_layers=4, num_heads=4,
               mlp_dim=128, image_size=32)
# The offline demo's backbone: 16 tokens of 8x8 pixels at 32px (4x cheaper than patch 4)
# and 4 x 8 = 32 heads, so that choosing a few heads is a real choice.
register_model("ViT-demo", ViT, family=VIT_JAX, patch_size=8, hidden_size=64, num_layers=4, num_heads=8,
               mlp_dim=128, image_size=32)
register_model("ViT-micro", ViT, family=VIT_JAX, patch_size=8, hidden_size=32, num_layers=2, num_heads=2,
               mlp_dim=64, image_size=32)
