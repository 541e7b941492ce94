"""PyTorch reference: ViT-B/16 training-step time for full fine-tuning, LoRA (peft), linear probe.

Measures, on this machine, one AdamW training step of timm's `vit_base_patch16_224`
(random init, 47 classes, fp32, 224x224, drop path 0.1 as configs/vtab.py) for:
  full     every parameter trainable
  lora     rank-8 LoRA (alpha 8) on q and v of every block via peft, plus the classifier
  linear   the classifier only; the backbone has requires_grad=False
Each method gets its warm-up steps, then the timed steps run round-robin (method after
method) so that load drift touches all alike; it prints the median step time, images/s
and trainable parameter counts as a table and writes them to --out as JSON
(`total_params` counts every parameter of the module, for lora peft's copy of the
classifier too).

LoRA on q and v: timm fuses q, k and v into one Linear (`attn.qkv`, 768 -> 2304). A LoRA
on that fused Linear would share one down-projection A between q, k and v, which is not
the method. So each block's `qkv` is split into three Linears `q`, `k`, `v` holding the
same weights (outputs checked equal to the fused model's) and peft's LoRA targets `q` and
`v`, as for HF ViT's `query`, `value` and the vit_jax layout heat_jax uses: 12 blocks x
2 x 8 x (768 + 768) = 294,912 trainable LoRA parameters (checked), plus the classifier.
The q/k/v matmuls then run as three GEMMs instead of one.

Setup (a separate venv; torch is not a heat_jax dependency):
  python3 -m venv /work/venv-torch
  /work/venv-torch/bin/pip install -r bench/requirements-torch.txt
Usage:
  /work/venv-torch/bin/python bench/torch_peft.py [--steps 10] [--warmup 2] [--batch 8]
      [--threads N] [--methods full,lora,linear] [--out bench/torch_peft.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

# torchvision's compiled ops do not load against the CPU torch wheel; timm imports
# torchvision only for transforms, which do not need them.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import peft  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


MODEL = "vit_base_patch16_224"
NUM_CLASSES = 47
IMAGE_SIZE = 224
LORA_RANK = 8
LORA_ALPHA = 8
METHODS = ("full", "lora", "linear")


class SplitQKV(nn.Module):
  """timm's fused qkv Linear as three Linears; the same output, q/k/v addressable."""

  def __init__(self, qkv: nn.Linear):
    super().__init__()
    dim = qkv.in_features
    self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv.bias is not None) for _ in range(3))
    with torch.no_grad():
      for i, part in enumerate((self.q, self.k, self.v)):
        part.weight.copy_(qkv.weight[i * dim:(i + 1) * dim])
        if qkv.bias is not None:
          part.bias.copy_(qkv.bias[i * dim:(i + 1) * dim])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)



def write_json(path: str, obj: dict) -> None:
  """Atomic JSON write (this script needs only torch, timm and peft, not heat_jax)."""
  target = Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(target.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2) + "\n")
  os.replace(tmp, target)

def count(model: nn.Module, trainable: bool = True, head: bool = True) -> int:
  return sum(p.numel() for n, p in model.named_parameters()
             if (p.requires_grad or not trainable) and (head or not is_head(n)))


def is_head(name: str) -> bool:
  # peft wraps the classifier as base_model.model.head.{original_module,modules_to_save}
  return name.startswith("head.") or ".head." in name


def build(method: str, drop_path: float) -> nn.Module:
  """The model of one method with requires_grad set; LoRA checked against the fused model."""
  torch.manual_seed(0)
  model = timm.create_model(MODEL, pretrained=False, num_classes=NUM_CLASSES,
                            drop_path_rate=drop_path)
  if method == "full":
    return model
  if method == "linear":
    for name, p in model.named_parameters():
      p.requires_grad = is_head(name)
    return model
  probe = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
  model.eval()
  with torch.no_grad():
    fused = model(probe)
  for block in model.blocks:
    block.attn.qkv = SplitQKV(block.attn.qkv)
  with torch.no_grad():
    diff = (model(probe) - fused).abs().max().item()
  if diff > 1e-4:
    raise RuntimeError(f"split q/k/v changed the outputs by {diff}")
  config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                           target_modules=["q", "v"], modules_to_save=["head"])
  model = peft.get_peft_model(model, config)
  vit = model.base_model.model
  expected = len(vit.blocks) * 2 * LORA_RANK * 2 * vit.embed_dim
  if count(model, head=False) != expected:
    raise RuntimeError(f"LoRA has {count(model, head=False)} trainable parameters outside "
                       f"the classifier, expected {expected}")
  model.train()
  return model


def make_step(model: nn.Module, batch: int) -> Callable[[], float]:
  """One AdamW step on a fixed random batch; returns the loss."""
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
  gen = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
  labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss.item()   # synchronises (a no-op on CPU, kept for accelerators)
  return step


def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  parser.add_argument("--methods", default=",".join(METHODS), help="subset of full,lora,linear")
  parser.add_argument("--drop_path", type=float, default=0.1)
  parser.add_argument("--out", default="bench/torch_peft.json", help="JSON output path")
  args = parser.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  bad = [m for m in methods if m not in METHODS]
  if bad or not methods or args.steps < 1 or args.warmup < 0 or args.batch < 1:
    print(f"error: need --methods from {','.join(METHODS)}, --steps >= 1, --warmup >= 0, "
          f"--batch >= 1 (got methods={args.methods!r}, steps={args.steps}, "
          f"warmup={args.warmup}, batch={args.batch})", file=sys.stderr)
    return 2
  if args.threads > 0:
    torch.set_num_threads(args.threads)

  models, steps = {}, {}
  for m in methods:
    t0 = time.perf_counter()
    models[m] = build(m, args.drop_path)
    steps[m] = make_step(models[m], args.batch)
    for _ in range(args.warmup):
      steps[m]()
    print(f"{m}: built and warmed up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
  times: dict[str, list[float]] = {m: [] for m in methods}
  for i in range(args.steps):
    for m in methods:
      t0 = time.perf_counter()
      steps[m]()
      times[m].append(time.perf_counter() - t0)
    print(f"step {i + 1}/{args.steps}: " + ", ".join(
        f"{m} {times[m][-1]:.2f} s" for m in methods), file=sys.stderr)

  rows = []
  for m in methods:
    median = statistics.median(times[m])
    rows.append({"method": m, "trainable_params": count(models[m]),
                 "trainable_params_no_head": count(models[m], head=False),
                 "total_params": count(models[m], trainable=False),
                 "median_step_s": round(median, 4), "images_per_s": round(args.batch / median, 3),
                 "min_step_s": round(min(times[m]), 4),
                 "step_times_s": [round(t, 4) for t in times[m]]})
  report = {
      "model": MODEL, "num_classes": NUM_CLASSES, "image_size": IMAGE_SIZE, "dtype": "float32",
      "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
      "drop_path": args.drop_path, "optimizer": "AdamW(lr=1e-3, weight_decay=1e-4)",
      "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": "q,v (qkv split)"},
      "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(),
                  "load_average": list(os.getloadavg()), "python": platform.python_version()},
      "versions": {"torch": torch.__version__, "timm": timm.__version__,
                   "peft": peft.__version__},
      "results": rows,
  }
  write_json(args.out, report)

  print(f"\n{MODEL}, batch {args.batch}, {IMAGE_SIZE}px, fp32, AdamW; median of {args.steps} "
        f"steps after {args.warmup} warm-up; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}")
  print("| method | trainable | trainable no head | median step (s) | images/s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_params_no_head']:,} | "
          f"{r['median_step_s']:.3f} | {r['images_per_s']:.2f} |")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
