"""Writes the timm-ViT-family fixtures under tests/fixtures/timm_vit/ with timm (and
transformers) as the reference.

For every case: build a TINY random-init timm model of the named architecture
(`timm.create_model(name, embed_dim=32, depth=2, num_heads=2, ...)`), perturb every
parameter (LayerScale far from its 1e-5 init, LayerNorms away from 1/0), save its
state dict as `<case>.safetensors` (the file heat_jax loads), then run seeded images
through timm in float64 and save the images and timm's logits (`<case>.npz`) plus
the case description (`<case>.json`).

Resample cases save a file at one grid and build the timm model at another: timm's
own `checkpoint_filter_fn` resamples the position embedding on load (bicubic,
antialias), as it does for DINOv2's 518 px files used at 224 px.

HF cases write the same weights as a transformers `Dinov2Model` / `ViTModel` with its
own `save_pretrained` (`<case>/model.safetensors`); the tool checks that HF's
features equal timm's before writing, and the logits are HF's pooled features
through the timm head (so an HF run-time position-embedding interpolation is the
reference where the image size differs).

Usage: python tools/make_timm_vit_fixtures.py [--only NAME ...] [--out DIR]
Needs torch (CPU), timm and transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heat_jax.io_utils import write_json, write_npz  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "timm_vit"
TINY = dict(embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0)
# heat_jax overrides of the same tiny size.
TINY_HEAT = dict(hidden_size=24, num_layers=2, num_heads=2, mlp_dim=48)
NUM_CLASSES = 5


def case(name: str, arch: str, *, seed: int, file_size: int, size: int | None = None,
         timm: dict | None = None, heat: dict | None = None, hf: str = "",
         of: str = "") -> dict[str, Any]:
  """`file_size`: the image size the file's position embedding is for; `size`: the
  size the models run at (default the same). `hf`: 'dinov2' / 'vit' writes the
  weights of case `of` as a transformers model instead."""
  return dict(name=name, arch=arch, seed=seed, file_size=file_size,
              size=size or file_size, timm=dict(TINY, **(timm or {})),
              heat=dict(TINY_HEAT, **(heat or {})), hf=hf, of=of,
              images=dict(seed=seed + 1000, count=2))


CASES = [
    case("dinov2", "vit_small_patch14_dinov2", seed=1, file_size=56),
    case("dinov2_resample", "vit_small_patch14_dinov2", seed=2, file_size=84, size=56),
    case("dinov2_reg4_resample", "vit_base_patch14_reg4_dinov2", seed=3, file_size=84,
         size=56),
    case("dinov2_avgpool", "vit_small_patch14_dinov2", seed=4, file_size=42,
         timm=dict(global_pool="avg"),
         heat=dict(classifier="gap", class_token=True, fc_norm=True)),
    case("deit_small", "deit_small_patch16_224", seed=5, file_size=48),
    case("augreg_base", "vit_base_patch16_224", seed=6, file_size=48, size=64),
    case("clip_b16", "vit_base_patch16_clip_224", seed=7, file_size=48),
    case("clip_b32_quickgelu", "vit_base_patch32_clip_quickgelu_224", seed=8,
         file_size=64),
    case("gap_no_cls", "vit_medium_patch16_gap_256", seed=9, file_size=48,
         timm=dict(num_heads=2)),
    case("hf_dinov2", "vit_small_patch14_dinov2", seed=1, file_size=56, hf="dinov2",
         of="dinov2"),
    case("hf_dinov2_interpolate", "vit_small_patch14_dinov2", seed=2, file_size=84,
         size=56, hf="dinov2", of="dinov2_resample"),
    case("hf_vit", "vit_base_patch16_224", seed=6, file_size=48, hf="vit",
         of="augreg_base"),
]


def import_libs():
  """torch and timm on a CPU-only torch (torchvision's compiled ops may not load)."""
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import timm
  import torch
  return torch, timm


def perturb(model, torch, seed: int) -> None:
  """Every parameter random: weights ~ fan_in^-1/2, norms ~ 1 +- 0.3, LayerScale
  ~ +-0.3..1 (far from its 1e-5 init), biases and tokens ~ 0.1..0.5."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g, dtype=p.dtype)
      if name.endswith(".gamma"):
        p.copy_(torch.sign(r) * (0.3 + 0.7 * torch.rand(p.shape, generator=g)))
      elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.3 * r)
      elif p.ndim == 1:
        p.copy_(0.1 * r)
      elif name in ("cls_token", "reg_token", "pos_embed"):
        p.copy_(0.5 * r)
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(r / np.sqrt(fan_in))
      p.copy_(p.half().to(p.dtype))   # stored as float16 (small fixtures), exactly

def timm_model(c: dict, torch, timm, img_size: int):
  return timm.create_model(c["arch"], pretrained=False, num_classes=NUM_CLASSES,
                           img_size=img_size, **c["timm"]).eval()


def images_of(c: dict) -> np.ndarray:
  """Seeded images (the test regenerates them: numpy's PCG64 stream is stable)."""
  rng = np.random.default_rng(c["images"]["seed"])
  return rng.uniform(-1.5, 1.5, (c["images"]["count"], c["size"], c["size"], 3)
                     ).astype(np.float32)


def timm_case(c: dict, out: Path, torch, timm) -> dict[str, Any]:
  from safetensors.torch import save_file
  from timm.models.vision_transformer import checkpoint_filter_fn
  torch.manual_seed(c["seed"])
  source = timm_model(c, torch, timm, c["file_size"])
  perturb(source, torch, c["seed"])
  state = {k: v.detach().clone().contiguous() for k, v in source.state_dict().items()}
  save_file({k: v.half() for k, v in state.items()}, str(out / f"{c['name']}.safetensors"),
            metadata={"format": "pt"})
  model = timm_model(c, torch, timm, c["size"])
  # timm's own load path: resamples the position embedding to the model's grid.
  model.load_state_dict(checkpoint_filter_fn(dict(state), model))
  x = torch.from_numpy(images_of(c)).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    logits32 = model(x).numpy()
    logits = model.double()(x.double()).numpy()
  return dict(logits=logits, fp32_vs_fp64=float(np.abs(logits32 - logits).max()),
              resampled=c["file_size"] != c["size"])


def _hf_model(c: dict, torch):
  import transformers
  t = c["timm"]
  common = dict(hidden_size=t["embed_dim"], num_hidden_layers=t["depth"],
                num_attention_heads=t["num_heads"], hidden_act="gelu",
                layer_norm_eps=1e-6, image_size=c["file_size"], qkv_bias=True,
                attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
  if c["hf"] == "dinov2":
    config = transformers.Dinov2Config(patch_size=14, mlp_ratio=int(t["mlp_ratio"]),
                                       **common)
    return transformers.Dinov2Model(config).eval()
  config = transformers.ViTConfig(patch_size=16,
                                  intermediate_size=int(t["mlp_ratio"] * t["embed_dim"]),
                                  **common)
  return transformers.ViTModel(config, add_pooling_layer=False).eval()


def _timm_to_hf(state: dict, kind: str, depth: int) -> dict:
  """The tool's own (test-side) name map: timm tensors -> the HF model's in-memory
  names (transformers 5.x: q_proj / k_proj / v_proj / o_proj; ViT blocks `layers.N`).
  `save_pretrained` writes the legacy file names (`attention.attention.query`, ...)."""
  out = {"embeddings.cls_token": state["cls_token"],
         "embeddings.position_embeddings": state["pos_embed"],
         "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
         "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
         "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
  names = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
  if kind == "vit":
    names.update(norm1="layernorm_before", norm2="layernorm_after")
  for i in range(depth):
    b = f"blocks.{i}."
    h = f"encoder.layer.{i}." if kind == "dinov2" else f"layers.{i}."
    for leaf in ("weight", "bias"):
      q, k, v = state[f"{b}attn.qkv.{leaf}"].chunk(3, dim=0)
      for part, t in zip(("q", "k", "v"), (q, k, v)):
        out[f"{h}attention.{part}_proj.{leaf}"] = t
      out[f"{h}attention.o_proj.{leaf}"] = state[f"{b}attn.proj.{leaf}"]
      for src, dst in names.items():
        out[f"{h}{dst}.{leaf}"] = state[f"{b}{src}.{leaf}"]
    if kind == "dinov2":
      out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
      out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
  return out


def hf_case(c: dict, out: Path, torch, timm) -> dict[str, Any]:
  from safetensors.torch import load_file, save_file
  state = {k: v.float() for k, v in load_file(str(out / f"{c['of']}.safetensors")).items()}
  hf = _hf_model(c, torch)
  weights = _timm_to_hf(state, c["hf"], c["timm"]["depth"])
  missing, unexpected = hf.load_state_dict(weights, strict=False)
  unexpected = [k for k in unexpected]
  missing = [k for k in missing if k != "embeddings.mask_token"]
  if missing or unexpected:
    raise RuntimeError(f"{c['name']}: HF names not covered {missing} / {unexpected}")
  folder = out / c["name"]
  if folder.exists():
    shutil.rmtree(folder)
  with tempfile.TemporaryDirectory() as tmp:
    hf.half().save_pretrained(tmp, safe_serialization=True)
    folder.mkdir()
    shutil.copy(Path(tmp) / "model.safetensors", folder / "model.safetensors")
    shutil.copy(Path(tmp) / "config.json", folder / "config.json")
  if c["file_size"] == c["size"]:
    # The in-memory names too (what an ONNX export of this model names its weights).
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()},
              str(folder / "in_memory_names.safetensors"))
  x = torch.from_numpy(images_of(c)).permute(0, 3, 1, 2).contiguous()
  hf = hf.double()
  with torch.no_grad():
    kwargs = {} if c["hf"] == "dinov2" else {"interpolate_pos_encoding": True}
    features = hf(pixel_values=x.double(), **kwargs).last_hidden_state[:, 0].numpy()
  head_w, head_b = state["head.weight"].double().numpy(), state["head.bias"].double().numpy()
  logits = features @ head_w.T + head_b
  check = {}
  if c["file_size"] == c["size"]:   # same grid: HF must reproduce timm exactly
    model = timm_model(c, torch, timm, c["size"]).double()
    model.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.no_grad():
      ref = model(x.double()).numpy()
    check["hf_vs_timm_max_abs_diff"] = float(np.abs(ref - logits).max())
    if check["hf_vs_timm_max_abs_diff"] > 1e-9:
      raise RuntimeError(f"{c['name']}: HF features differ from timm's: {check}")
  return dict(logits=logits, **check)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", nargs="*", help="case names to (re)write")
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  torch, timm = import_libs()
  args.out.mkdir(parents=True, exist_ok=True)
  for c in CASES:
    if args.only and c["name"] not in args.only:
      continue
    result = (hf_case if c["hf"] else timm_case)(c, args.out, torch, timm)
    logits = result.pop("logits")
    write_npz(args.out / f"{c['name']}.npz", {"logits": logits.astype(np.float64)})
    write_json(args.out / f"{c['name']}.json", dict(
        c, num_classes=NUM_CLASSES, timm_version=timm.__version__,
        images_sum=float(images_of(c).astype(np.float64).sum()),
        logits_abs_max=float(np.abs(logits).max()), **result))
    print(json.dumps({"case": c["name"], **result}))
  total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
  print(f"fixtures: {total} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
