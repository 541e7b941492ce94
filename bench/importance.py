"""Cost of Taylor-expansion importance scores (TIS) against full backprop and head ablation.

For each model (random weights, batch 8 at the model's image size) prints, after
compilation and one warm-up call, the median of `--runs` timed calls of:
  full       value_and_grad of the loss w.r.t. ALL parameters (one training step's backprop)
  tis:<s>    one `heat_jax.importance.make_tis_step` call (all heads of all layers)
  ablation   `heat_jax.importance.ablation_scores` on one batch: one forward pass per head
             plus the plain model. Models with up to 32 heads run every head; larger
             ones only an evenly spaced subset of `--max-ablation-heads` heads, and the
             time is extrapolated linearly per forward pass (stated in the output).
and the ratios (a) tis / full (goal <= 1.0) and (b) ablation / tis (goal >= 50).
The timed calls are interleaved round-robin so that load drift affects all alike; the
ratios from the fastest run of each call are printed too (least disturbed by other load).

Usage: python bench/importance.py [--models ViT-B_16,ViT-tiny] [--strategies head,gate]
                                  [--runs 3] [--batch 8] [--max-ablation-heads 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from heat_jax import importance  # noqa: E402
from heat_jax.losses import masked_cross_entropy  # noqa: E402
from heat_jax.models import create_model, head_layout  # noqa: E402


def _timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def bench_model(name: str, strategies: list[str], runs: int, batch_size: int,
                max_ablation_heads: int) -> dict:
  model = create_model(name, num_classes=47, head_init="lecun")
  size = model.image_size
  layout = head_layout(model)
  t0 = time.perf_counter()
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  params = jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, 47, batch_size).astype(np.int32),
           "mask": np.ones(batch_size, np.float32)}
  device_batch = jax.device_put(batch)

  def full_loss(p, image, label, mask):
    return masked_cross_entropy(model.apply({"params": p}, image, train=False), label, mask)

  full = jax.jit(jax.value_and_grad(full_loss))
  calls = {"full": lambda: full(params, device_batch["image"], device_batch["label"],
                                device_batch["mask"])}
  for s in strategies:
    step = importance.make_tis_step(model, s)
    calls[f"tis:{s}"] = (lambda step=step: step(params, device_batch))

  heads = [tuple(int(i) for i in lh) for lh in np.argwhere(layout.valid)]
  subset = heads
  if len(heads) > max(max_ablation_heads, 32):
    idx = np.linspace(0, len(heads) - 1, max_ablation_heads).round().astype(int)
    subset = [heads[i] for i in idx]
  calls["ablation"] = lambda: importance.ablation_scores(model, params, [batch], heads=subset,
                                                         progress=False)

  compile_s = {k: _timed(fn) for k, fn in calls.items()}  # compile + first call
  for k, fn in calls.items():  # warm-up (the first call after compiling is slower)
    if k != "ablation":  # its first call already ran every forward after the first
      _timed(fn)
  times: dict[str, list[float]] = {k: [] for k in calls}
  for _ in range(runs):
    for k, fn in calls.items():
      times[k].append(_timed(fn))
  med = {k: statistics.median(v) for k, v in times.items()}
  fastest = {k: min(v) for k, v in times.items()}
  per_forward = med["ablation"] / (len(subset) + 1)
  return dict(name=name, batch=batch_size, heads=len(heads), layout=layout.shape,
              init_s=init_s, compile_s=compile_s, times=times, med=med, fastest=fastest,
              subset=len(subset), per_forward=per_forward,
              ablation_all=per_forward * (len(heads) + 1),
              ablation_all_fastest=fastest["ablation"] / (len(subset) + 1) * (len(heads) + 1),
              extrapolated=len(subset) < len(heads))


def report(r: dict, strategies: list[str]) -> None:
  med = r["med"]
  print(f"\n== {r['name']}: {r['heads']} heads {r['layout']}, batch {r['batch']}, "
        f"jit(init) {r['init_s']:.1f} s")
  for k in med:
    runs = ", ".join(f"{t:.3f}" for t in r["times"][k])
    print(f"  {k:10s} compile+1st {r['compile_s'][k]:7.2f} s   median {med[k]:8.4f} s   "
          f"runs [{runs}]")
  if r["extrapolated"]:
    print(f"  ablation: measured {r['subset']} of {r['heads']} heads (+ plain model) = "
          f"{r['subset'] + 1} forwards, {r['per_forward']:.4f} s each; EXTRAPOLATED to all "
          f"{r['heads']} heads + plain = {r['heads'] + 1} forwards: {r['ablation_all']:.2f} s")
  else:
    print(f"  ablation: all {r['heads']} heads + plain = {r['heads'] + 1} forwards measured: "
          f"{r['ablation_all']:.3f} s ({r['per_forward']:.4f} s per forward)")
  for s in strategies:
    t = med[f"tis:{s}"]
    a, b = t / med["full"], r["ablation_all"] / t
    goal_b = "ok" if b >= 50 else "MISSED"
    if r["heads"] < 100:
      goal_b = f"goal is for ViT-B/16; {r['heads'] + 1} forwards cannot reach it"
    print(f"  TIS {s:5s}: (a) tis/full = {a:5.2f} (goal <= 1.0: {'ok' if a <= 1 else 'MISSED'})"
          f"   (b) ablation/tis = {b:6.1f}x ({goal_b})")
    t_min = r["fastest"][f"tis:{s}"]
    print(f"             fastest runs instead of medians: (a) {t_min / r['fastest']['full']:5.2f}"
          f"   (b) {r['ablation_all_fastest'] / t_min:6.1f}x")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="ViT-B_16,ViT-tiny")
  ap.add_argument("--strategies", default="head,gate")
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--max-ablation-heads", type=int, default=6,
                  help="time at most this many heads' ablations and extrapolate")
  args = ap.parse_args()
  strategies = [s for s in args.strategies.split(",") if s]
  for s in strategies:
    importance.check_strategy(s)
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or '?'}, "
        f"{os.cpu_count()} cpus, load avg {load[0]:.1f}); median of {args.runs} runs after "
        f"compile + 1 warm-up; batch {args.batch}")
  start = time.perf_counter()
  for name in [m for m in args.models.split(",") if m]:
    r = bench_model(name, strategies, args.runs, args.batch, args.max_ablation_heads)
    report(r, strategies)
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  print(f"\ntotal {time.perf_counter() - start:.0f} s; load avg at end {load[0]:.1f}")


if __name__ == "__main__":
  main()
