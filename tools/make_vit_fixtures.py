"""Writes the ViT golden fixtures under tests/fixtures/vit_timm/ with timm as reference.

For every case: build synthetic weights from a seed in the exact vit_jax or big_vision
`.npz` layout, load them into a matching timm `VisionTransformer` through timm's own
npz loader (`timm.models.vision_transformer._load_weights`), run seeded images in
float64, and save timm's logits (`<case>.npz`) plus the case description
(`<case>.json`). Weights and images are never committed: the test regenerates them
from the seeds. If heat_jax imports, the max abs difference of its float32 logits is
printed for each case.

Usage: python tools/make_vit_fixtures.py [--only NAME ...] [--out DIR]
Needs torch (CPU) and timm.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heat_jax.io_utils import write_json, write_npz  # noqa: E402
from heat_jax.testing import vit_golden  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "vit_timm"


def _tiny(name: str, *, seed: int, dialect: str = "vit_jax", classifier: str = "token",
          hidden: int = 48, layers: int = 3, heads: int = 3, mlp: int = 96,
          file_grid: int = 8, image_hw: tuple[int, int] = (32, 32), prefix: str = "",
          scanned: bool = False, representation_size: int | None = None,
          interpolation: str = "bilinear", count: int = 3) -> dict[str, Any]:
  """A tiny case (patch 4) run through the registered `ViT-tiny` with overrides."""
  arrays = dict(hidden=hidden, layers=layers, heads=heads, mlp=mlp, patch=4,
                grid=file_grid, num_classes=10, seed=seed, dialect=dialect,
                classifier=classifier, representation_size=representation_size,
                scanned=scanned, prefix=prefix)
  overrides = dict(hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp,
                   patch_size=4, image_size=image_hw[0], classifier=classifier)
  return dict(name=name, arrays=arrays, model="ViT-tiny", overrides=overrides,
              image_hw=list(image_hw), interpolation=interpolation,
              images=dict(seed=seed + 1000, count=count))


def _full(name: str, model: str, *, seed: int, hidden: int, heads: int, mlp: int,
          layers: int = 12, dialect: str = "vit_jax", classifier: str = "token",
          file_grid: int = 14, image: int = 224, prefix: str = "", scanned: bool = False,
          interpolation: str = "bilinear") -> dict[str, Any]:
  """A full-size case: only the seed, the description and the logits are committed."""
  arrays = dict(hidden=hidden, layers=layers, heads=heads, mlp=mlp, patch=16,
                grid=file_grid, num_classes=100, seed=seed, dialect=dialect,
                classifier=classifier, representation_size=None, scanned=scanned,
                prefix=prefix)
  overrides = {} if image == 224 else {"image_size": image}
  if classifier != "token":
    overrides["classifier"] = classifier
  return dict(name=name, arrays=arrays, model=model, overrides=overrides,
              image_hw=[image, image], interpolation=interpolation,
              images=dict(seed=seed + 1000, count=2), full_size=True)


CASES = [
    _tiny("vit_jax_token", seed=11),
    _tiny("vit_jax_opt_target", seed=12, prefix="opt/target/", hidden=32, heads=4,
          layers=2, mlp=64),
    _tiny("vit_jax_pre_logits", seed=13, representation_size=48),
    _tiny("big_vision_token", seed=14, dialect="big_vision", prefix="params/", heads=4,
          hidden=64, mlp=128, layers=2),
    _tiny("big_vision_gap_scanned", seed=15, dialect="big_vision", classifier="gap",
          scanned=True, heads=2, hidden=32, layers=4, mlp=64),
    _tiny("vit_jax_posemb_resize", seed=16, file_grid=5),
    _tiny("big_vision_posemb_resize_rect", seed=17, dialect="big_vision", file_grid=6,
          image_hw=(32, 40), heads=4, hidden=32, mlp=64, layers=2),
    _full("ViT-B_16_224_vit_jax", "ViT-B_16", seed=21, hidden=768, heads=12, mlp=3072),
    _full("ViT-B_16_384_posemb_resize", "ViT-B_16", seed=21, hidden=768, heads=12,
          mlp=3072, image=384),
    _full("ViT-S_16_big_vision_gap_scanned", "ViT-S_16", seed=23, hidden=384, heads=6,
          mlp=1536, dialect="big_vision", classifier="gap", prefix="params/",
          scanned=True),
]


def import_timm():
  """Imports timm on a CPU-only torch (torchvision's compiled ops may not load)."""
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import timm  # noqa: F401
  import torch
  from timm.models import vision_transformer
  return torch, vision_transformer


def timm_model(case: dict[str, Any], torch, vision_transformer):
  """A timm VisionTransformer that matches the case (tanh GELU, LayerNorm eps 1e-6)."""
  a = case["arrays"]
  token = a["classifier"] == "token"
  return vision_transformer.VisionTransformer(
      img_size=tuple(case["image_hw"]), patch_size=a["patch"], num_classes=a["num_classes"],
      embed_dim=a["hidden"], depth=a["layers"], num_heads=a["heads"],
      mlp_ratio=a["mlp"] / a["hidden"], class_token=token,
      global_pool="token" if token else "avg", fc_norm=False,
      # big_vision adds the posemb before the class-token concat.
      no_embed_class=a["dialect"] == "big_vision",
      act_layer=functools.partial(torch.nn.GELU, approximate="tanh"),
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()


def timm_kwargs_text(case: dict[str, Any]) -> dict[str, Any]:
  """The timm settings, recorded in the JSON for readers."""
  a = case["arrays"]
  token = a["classifier"] == "token"
  return dict(img_size=case["image_hw"], patch_size=a["patch"], embed_dim=a["hidden"],
              depth=a["layers"], num_heads=a["heads"], mlp_ratio=a["mlp"] / a["hidden"],
              num_classes=a["num_classes"], class_token=token,
              global_pool="token" if token else "avg", fc_norm=False,
              no_embed_class=a["dialect"] == "big_vision", act_layer="GELU(tanh)",
              norm_eps=1e-6, loader="timm.models.vision_transformer._load_weights",
              forward_dtype="float64")


def run_case(case: dict[str, Any], out_dir: Path, torch, vision_transformer,
             heat_jax_ok: bool) -> dict[str, Any]:
  """Writes the fixture of one case; returns a summary row."""
  start = time.time()
  arrays = vit_golden.case_arrays(case)
  images = vit_golden.case_images(case)
  with tempfile.TemporaryDirectory() as tmp:
    npz = Path(tmp) / f"{case['name']}.npz"
    write_npz(npz, arrays)
    model = timm_model(case, torch, vision_transformer)
    vision_transformer._load_weights(model, str(npz))
    kernel, bias = vit_golden.file_head(case, arrays)
    if not (np.array_equal(model.head.weight.detach().numpy(), kernel.T)
            and np.array_equal(model.head.bias.detach().numpy(), bias)):
      raise RuntimeError(f"{case['name']}: timm did not load the file's head")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
      logits32 = model(x).numpy()
      logits = model.double()(x.double()).numpy()
    row = {"case": case["name"], "timm_fp32_vs_fp64": float(np.abs(logits32 - logits).max())}
    if heat_jax_ok:
      ours = vit_golden.heat_jax_logits(case, npz, arrays, images)
      row["heat_jax_max_abs_diff"] = float(np.abs(ours.astype(np.float64) - logits).max())
  description = dict(case)
  description["timm"] = timm_kwargs_text(case)
  description["fingerprints"] = {"weights": vit_golden.fingerprint(arrays),
                                 "images": vit_golden.fingerprint(images)}
  description["logits_abs_max"] = float(np.abs(logits).max())
  description["timm_fp32_vs_fp64_max_abs_diff"] = row["timm_fp32_vs_fp64"]
  write_json(out_dir / f"{case['name']}.json", description)
  write_npz(out_dir / f"{case['name']}.npz", {"logits": logits.astype(np.float64)})
  row["seconds"] = round(time.time() - start, 1)
  return row


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", nargs="*", help="case names to (re)write")
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  torch, vision_transformer = import_timm()
  torch.manual_seed(0)
  try:
    import jax  # noqa: F401
    import heat_jax.checkpoints  # noqa: F401
    heat_jax_ok = True
  except ImportError as e:
    print(f"heat_jax not importable ({e}); writing fixtures without comparing")
    heat_jax_ok = False
  names = {c["name"] for c in CASES}
  unknown = set(args.only or []) - names
  if unknown:
    parser.error(f"unknown case(s) {sorted(unknown)}; known: {sorted(names)}")
  args.out.mkdir(parents=True, exist_ok=True)
  worst = 0.0
  for case in CASES:
    if args.only and case["name"] not in args.only:
      continue
    row = run_case(case, args.out, torch, vision_transformer, heat_jax_ok)
    worst = max(worst, row.get("heat_jax_max_abs_diff", 0.0))
    print(json.dumps(row))
  if heat_jax_ok:
    print(f"worst heat_jax max abs diff: {worst:.3g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
