"""Builds the Swin test fixtures with timm as the independent reference (needs torch, timm).

Writes under tests/fixtures/:
  swin_tiny.safetensors  tiny timm SwinTransformer (img 32, patch 4, embed 32, depths
                         (2, 2), heads (2, 4), window 4), random init from a torch seed
                         with perturbed norms / biases / tables, timm layout, with head
  swin_tiny.npz          timm logits on seeded inputs at 32 px; logits of the same
                         weights in a 64 px / window 8 model after the bias tables are
                         resized (bicubic as Microsoft's fine-tuning code, and timm's own
                         `checkpoint_filter_fn`), and the resized tables of block 0
  swin_padded.npz        timm logits of a 40 px model whose maps need window padding and
                         an odd-sided merge, weights from `fake_swin` (seed, not stored)
  swin_full.npz          timm logits of Swin-T and Swin-B at 224 px with weights from
                         `heat_jax.testing.fake_swin.swin_state_dict(seed)` (not stored)
  swin_fixtures.json     configurations, seeds, and the max |heat_jax - timm| measured

Usage: python tools/make_swin_fixtures.py [--out tests/fixtures] [--skip-full]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.modules["torchvision._meta_registrations"] = types.ModuleType(
    "torchvision._meta_registrations")
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from heat_jax.testing import fake_swin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCH_SEED = 20240601
INPUT_SEED = 7
NUM_CLASSES = 10
RESIZE = dict(img_size=64, window_size=8)  # target of the bias-table resize case


def timm_swin(cfg: dict, num_classes: int = NUM_CLASSES) -> torch.nn.Module:
  return timm.models.swin_transformer.SwinTransformer(
      num_classes=num_classes, drop_path_rate=0.0, **cfg).eval()


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Non-trivial random weights: fan-in scaled kernels, perturbed norms and biases."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("relative_position_bias_table"):
        p.copy_(noise)
      elif p.ndim == 1 and name.endswith(".weight"):  # LayerNorm scale
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith(".bias"):
        p.copy_(0.05 * noise)
      else:  # Linear / Conv kernels
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(noise * fan_in ** -0.5)


def inputs(n: int, size: int, seed: int = INPUT_SEED) -> np.ndarray:
  """NHWC float32 inputs; tests regenerate them with the same call."""
  return np.random.default_rng(seed).standard_normal((n, size, size, 3), dtype=np.float32)


def timm_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def bicubic_tables(state: dict[str, np.ndarray], target: torch.nn.Module
                   ) -> dict[str, np.ndarray]:
  """Microsoft's fine-tuning resize: F.interpolate(bicubic) of each table to the target."""
  out = dict(state)
  target_state = target.state_dict()
  for key, value in state.items():
    if not key.endswith("relative_position_bias_table"):
      continue
    n_new, heads = target_state[key].shape
    s_old, s_new = int(round(value.shape[0] ** 0.5)), int(round(n_new ** 0.5))
    t = torch.from_numpy(value).permute(1, 0).reshape(1, heads, s_old, s_old)
    t = F.interpolate(t, size=(s_new, s_new), mode="bicubic", align_corners=False)
    out[key] = t.reshape(heads, n_new).permute(1, 0).contiguous().numpy()
  return out


def load(model: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                         for k, v in state.items()})


def heat_logits(state: dict[str, np.ndarray], cfg: dict, x: np.ndarray,
                interpolation: str = "bicubic") -> np.ndarray:
  """heat_jax logits after converting a timm state dict (head copied from the file)."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from heat_jax.checkpoints import swin_timm
  from heat_jax.models.swin import Swin

  model = Swin(num_classes=NUM_CLASSES, patch_size=cfg["patch_size"],
               embed_dim=cfg["embed_dim"], depths=tuple(cfg["depths"]),
               num_heads=tuple(cfg["num_heads"]), window_size=cfg["window_size"],
               image_size=cfg["img_size"])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *x.shape[1:])))
  template = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(shapes["params"], sep="/").items()}
  flat, _ = swin_timm.convert(state, template, interpolation=interpolation)
  flat["head/kernel"] = state["head.fc.weight"].T
  flat["head/bias"] = state["head.fc.bias"]
  params = traverse_util.unflatten_dict(flat, sep="/")
  return np.asarray(jax.jit(model.apply)({"params": params}, x))


def make_tiny(out_dir: Path, report: dict) -> None:
  cfg = dict(fake_swin.TINY)
  model = timm_swin(cfg)
  randomise(model, TORCH_SEED)
  state = state_numpy(model)
  save_file(state, str(out_dir / "swin_tiny.safetensors"))
  (out_dir / "swin_tiny.safetensors").chmod(0o644)
  x = inputs(2, cfg["img_size"])
  ref = timm_logits(model, x)
  arrays = {"logits": ref}
  diffs = {"tiny": float(np.abs(heat_logits(state, cfg, x) - ref).max())}

  big = {**cfg, **RESIZE}
  xb = inputs(2, big["img_size"])
  target = timm_swin(big)
  filtered = timm.models.swin_transformer.checkpoint_filter_fn(
      {k: torch.from_numpy(v) for k, v in state.items()}, target)
  geometric = {k: v.numpy() for k, v in filtered.items()}
  load(target, geometric)
  arrays["logits_resize_geometric"] = timm_logits(target, xb)
  bicubic = bicubic_tables(state, target)
  load(target, bicubic)
  arrays["logits_resize_bicubic"] = timm_logits(target, xb)
  for s in range(len(cfg["depths"])):
    key = f"layers.{s}.blocks.0.attn.relative_position_bias_table"
    arrays[f"table_geometric_{s}"] = geometric[key]
    arrays[f"table_bicubic_{s}"] = bicubic[key]
  for method in ("bicubic", "geometric"):
    diffs[f"resize_{method}"] = float(np.abs(
        heat_logits(state, big, xb, method) - arrays[f"logits_resize_{method}"]).max())
  np.savez(out_dir / "swin_tiny.npz", **arrays)
  report["tiny"] = {"config": cfg, "num_classes": NUM_CLASSES, "torch_seed": TORCH_SEED,
                    "input_seed": INPUT_SEED, "num_inputs": 2, "resize_target": RESIZE,
                    "max_abs_diff": diffs}
  print("tiny:", diffs)


def make_padded(out_dir: Path, report: dict, seed: int = 11) -> None:
  cfg = dict(fake_swin.PADDED)
  state = fake_swin.swin_state_dict(**cfg, num_classes=NUM_CLASSES, seed=seed)
  model = timm_swin(cfg)
  load(model, state)
  x = inputs(2, cfg["img_size"])
  ref = timm_logits(model, x)
  diff = float(np.abs(heat_logits(state, cfg, x) - ref).max())
  np.savez(out_dir / "swin_padded.npz", logits=ref)
  report["padded"] = {"config": cfg, "weights_seed": seed, "input_seed": INPUT_SEED,
                      "num_inputs": 2, "num_classes": NUM_CLASSES, "max_abs_diff": diff}
  print("padded:", diff)


def make_full(out_dir: Path, report: dict, seed: int = 0, num_inputs: int = 1) -> None:
  arrays, entry = {}, {}
  for name, cfg in fake_swin.FULL.items():
    t0 = time.time()
    state = fake_swin.swin_state_dict(**cfg, num_classes=NUM_CLASSES, seed=seed)
    model = timm_swin(cfg)
    load(model, state)
    x = inputs(num_inputs, cfg["img_size"])
    ref = timm_logits(model, x)
    diff = float(np.abs(heat_logits(state, cfg, x) - ref).max())
    if diff > 1e-4:
      raise SystemExit(f"{name}: heat_jax differs from timm by {diff:.3g} > 1e-4")
    arrays[name] = ref
    entry[name] = {"config": cfg, "max_abs_diff": diff,
                   "max_abs_logit": float(np.abs(ref).max())}
    print(f"{name}: max |diff| {diff:.3g} ({time.time() - t0:.1f} s)")
  np.savez(out_dir / "swin_full.npz", **arrays)
  report["full"] = {"weights_seed": seed, "input_seed": INPUT_SEED,
                    "num_inputs": num_inputs, "num_classes": NUM_CLASSES, "models": entry}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
  parser.add_argument("--skip-full", action="store_true")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(max(1, torch.get_num_threads()))
  report = {"timm_version": timm.__version__, "torch_version": torch.__version__}
  path = args.out / "swin_fixtures.json"
  if args.skip_full and path.exists():
    report = {**json.loads(path.read_text()), **report}
  make_tiny(args.out, report)
  make_padded(args.out, report)
  if not args.skip_full:
    make_full(args.out, report)
  path.write_text(json.dumps(report, indent=2) + "\n")
  print("wrote", path)


if __name__ == "__main__":
  main()
