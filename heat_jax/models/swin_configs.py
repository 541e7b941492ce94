"""Named Swin configurations (timm / Microsoft sizes) and tiny test configurations."""

from heat_jax.models.backbone import Family
from heat_jax.models.registry import register_model
from heat_jax.models.swin import Swin

SWIN = Family("swin", value_range="imagenet", source="timm / Microsoft Swin")

# name: (embed_dim, depths, num_heads)
_SIZES = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "L": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}

for _size, (_dim, _depths, _heads) in _SIZES.items():
  register_model(f"Swin-{_size}", Swin, family=SWIN, patch_size=4, embed_dim=_dim, depths=_depths,
                 num_heads=_heads, window_size=7, image_size=224)
  register_model(f"Swin-{_size}_384", Swin, family=SWIN, patch_size=4, embed_dim=_dim, depths=_depths,
                 num_heads=_heads, window_size=12, image_size=384)

# Tiny configurations for tests and the offline demo (32x32 images). `Swin-tiny` has a
# shifted block in stage 0 (8x8 map, window 4) and one patch merging.
register_model("Swin-tiny", Swin, family=SWIN, patch_size=4, embed_dim=32, depths=(2, 2),
               num_heads=(2, 4), window_size=4, image_size=32)
register_model("Swin-micro", Swin, family=SWIN, patch_size=4, embed_dim=16, depths=(2, 2),
               num_heads=(1, 2), window_size=4, image_size=32)
