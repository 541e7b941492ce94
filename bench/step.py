"""Training-step cost of every method: time, throughput, compiled memory, FLOPs, state.

For each method (random weights, a fixed random batch, AdamW as configs/common.py, drop
path 0.1 as configs/vtab.py) it compiles `Trainer`'s donated train step once and
reports:
  step_s       median step time after the warm-up steps; img_s = batch / step_s
  mem_mb       the compiled program's memory: arguments + temporaries (memory_analysis)
  trainable    exact trainable scalars (the method's mask)
  opt_state    optimizer-state scalars (Adam moments + counters)
  gflop        FLOPs of one step (cost_analysis); gbyte: bytes accessed. XLA counts a
               loop body once: with accumulation (`method@k`) these cover one
               micro-batch plus the update, not the whole step
  mm_limit_s   gflop / the measured large-matmul throughput of this machine
  mem_limit_s  gbyte / the measured copy bandwidth of this machine
  mfu          (GPU/TPU only) FLOPs / step time / peak (a table, else the matmul rate)
and the ratios of time and memory against `full`. The timed steps run round-robin
(one step of each method in turn), so machine noise hits all methods alike; the ratios
are only meaningful within one run.

Methods: full, linear, bitfit, lora, adapter, vpt, heat:<budget>[:top],
heart_lora:<budget>. A HEAT budget is a fraction of all heads, spread evenly over the
layers (round-robin from the top layer down, different heads in neighbouring layers)
or, with `:top`, packed into the top layers. No TIS is computed: the selection is
fixed so that the cost depends on the budget only.

Usage: python bench/step.py [--model ViT-B_16] [--batch 8] [--steps 5] [--warmup 2]
           [--methods full,lora,heat:0.1] [--accum 1,2,4] [--bf16] [--out step.json]
           [--variants JSON] [--trace DIR]
`--steps 0` compiles and reports memory / FLOPs only (e.g. memory against --accum).
`--variants` compiles every method once per set of extra XLA options (to compare
compiler settings in one interleaved run); `--trace` writes a profiler trace of one
round of steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.common import base_config  # noqa: E402
from heat_jax import checkpoints  # noqa: E402
from heat_jax.experiment import build_model  # noqa: E402
from heat_jax.io_utils import write_json  # noqa: E402
from heat_jax.methods import get_method  # noqa: E402
from heat_jax.methods.base import MethodContext  # noqa: E402
from heat_jax.models import head_layout, model_defaults  # noqa: E402
from heat_jax.training import partition  # noqa: E402
from heat_jax.training.trainer import Trainer, compiler_options  # noqa: E402

NUM_CLASSES = 47
DEFAULT_METHODS = ("full,linear,bitfit,lora,adapter,vpt,heat:1.0,heat:0.5,heat:0.1,"
                   "heat:0.1:top,heart_lora:0.1")
# Dense peak FLOP/s by device kind (substring match): (float32 matmul as JAX runs it by
# default, bfloat16). GPUs run f32 matmuls in TF32 by default.
PEAK_FLOPS = {
    "H200": (494e12, 989e12), "H100": (494e12, 989e12), "A100": (156e12, 312e12),
    "L4": (60e12, 121e12), "T4": (8.1e12, 65e12), "V100": (15.7e12, 125e12),
    "TPU v4": (275e12, 275e12), "TPU v5 lite": (197e12, 197e12), "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12), "TPU v6": (918e12, 918e12),
}


# ----------------------------------------------------------------------------- selection


def spread_selection(heads_per_layer: tuple[int, ...], count: int) -> np.ndarray:
  """`count` heads spread over the layers: round-robin from the top layer down, each
  layer's next head offset so neighbouring layers use different heads."""
  layers = len(heads_per_layer)
  sel = np.zeros((layers, max(heads_per_layer)), bool)
  taken = np.zeros(layers, int)
  n = 0
  while taken.sum() < count:
    layer = layers - 1 - n % layers
    n += 1
    heads = heads_per_layer[layer]
    if taken[layer] < heads:
      sel[layer, (layer + taken[layer]) % heads] = True
      taken[layer] += 1
  return sel


def top_selection(heads_per_layer: tuple[int, ...], count: int) -> np.ndarray:
  """`count` heads packed into the top layers (all heads of the top layer first)."""
  sel = np.zeros((len(heads_per_layer), max(heads_per_layer)), bool)
  for layer in reversed(range(len(heads_per_layer))):
    take = min(count, heads_per_layer[layer])
    sel[layer, :take] = True
    count -= take
  return sel


# ----------------------------------------------------------------------------- setup


def method_config(spec: str, args: argparse.Namespace):
  """(config, selection or None) for a method spec such as `heat:0.1:top`."""
  name, *opts = spec.split(":")
  c = base_config()
  c.model.name = args.model
  c.model.pretrained = ""
  c.model.image_size = args.image_size or model_defaults(args.model).get("image_size", 224)
  c.model.drop_path_rate = args.drop_path
  c.train.bf16 = args.bf16
  c.method.name = {"heart_lora": "heat"}.get(name, name)
  if name == "heart_lora":
    c.heat.tune = "lora"
  if c.method.name == "heat":
    c.heat.budget = float(opts[0]) if opts else 0.5
  return c, opts


def build(spec: str, args: argparse.Namespace, accum: int, batch: dict,
          variant: str = "", options: Optional[dict] = None) -> dict:
  """Trainer, state and compiled step of one method (XLA `options` added to the
  trainer's own compiler options)."""
  c, opts = method_config(spec, args)
  method = get_method(c)
  model, _ = build_model(c, NUM_CLASSES, method.extensions())
  params = checkpoints.init_params(model, rng=jax.random.key(0))
  model_state = checkpoints.init_model_state(model, rng=jax.random.key(0))
  if c.method.name == "heat":
    layout = head_layout(model)
    count = int(round(c.heat.budget * layout.total_heads))
    pick = top_selection if "top" in opts else spread_selection
    method.restore({"selected": pick(layout.heads_per_layer, count).tolist()})
  ctx = MethodContext(config=c, model=model, params=params, task=None, workdir="",
                      model_state=model_state)
  mask = method.trainable_mask(ctx)
  model, _ = build_model(c, NUM_CLASSES, method.trained_extensions())
  trainer = Trainer(model, params, mask, c.optim, total_steps=1000, steps_per_epoch=100,
                    model_state=model_state, accum_steps=accum)
  state = trainer.initial_state()
  device_batch = trainer.put_batch(batch)
  tic = time.perf_counter()
  lowered = trainer._train_step.lower(state, trainer.frozen, device_batch)
  if options:
    base = compiler_options(trainer.mesh) or {}
    compiled = lowered.compile(compiler_options={**base, **options})
  else:
    compiled = lowered.compile()
  compile_s = time.perf_counter() - tic
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  mem = compiled.memory_analysis()
  row = {
      "method": (spec if accum == 1 else f"{spec}@{accum}") + (f"[{variant}]" if variant else ""),
      "accum": accum,
      "trainable": partition.count(params, mask),
      "trainable_arrays": sum(int(x.size) for x in jax.tree.leaves(state["params"])),
      "opt_state": sum(int(np.size(x)) for x in jax.tree.leaves(state["opt_state"])),
      "gflop": float(cost.get("flops", float("nan"))) / 1e9,
      "gbyte": float(cost.get("bytes accessed", float("nan"))) / 1e9,
      "compile_s": compile_s,
  }
  if mem is not None:
    row["arg_mb"] = mem.argument_size_in_bytes / 2**20
    row["temp_mb"] = mem.temp_size_in_bytes / 2**20
    row["mem_mb"] = row["arg_mb"] + row["temp_mb"]
  return {"row": row, "compiled": compiled, "jit": trainer._train_step, "state": state,
          "frozen": trainer.frozen,
          "batch": device_batch, "times": []}


# ----------------------------------------------------------------------------- machine


def _median_time(fn: Callable[[], Any], runs: int) -> float:
  jax.block_until_ready(fn())  # compile / warm up
  times = []
  for _ in range(runs):
    tic = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - tic)
  return statistics.median(times)


def machine_rates(n: int, dtype: Any, runs: int = 3) -> dict[str, float]:
  """Measured n^3 matmul FLOP/s and copy bandwidth (bytes read + written per second)."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  matmul_s = _median_time(lambda: mm(a, b), runs)
  x = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
  copy = jax.jit(lambda x: x * 1.0001)
  copy_s = _median_time(lambda: copy(x), runs)
  return {"matmul_flops": 2 * n ** 3 / matmul_s, "matmul_n": n,
          "copy_bytes_s": 2 * x.size * 4 / copy_s}


def peak_flops(device: Any, bf16: bool) -> Optional[float]:
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peaks[1 if bf16 else 0]
  return None


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict:
  device = jax.devices()[0]
  load_before = os.getloadavg()
  rng = np.random.default_rng(0)
  c, _ = method_config("full", args)
  size = c.model.image_size
  batch = {"image": rng.standard_normal((args.batch, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32),
           "mask": np.ones(args.batch, np.float32)}
  accums = [int(a) for a in args.accum.split(",")]
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  variants = json.loads(args.variants) if args.variants else {"": None}
  runs = {}
  for m in methods:
    for k in accums:
      for name, options in variants.items():
        built = build(m, args, k, batch, name, options)
        runs[built["row"]["method"]] = built
        print(f"compiled {built['row']['method']} in {built['row']['compile_s']:.1f} s",
              file=sys.stderr)

  # Round-robin: step i of every method before step i + 1 of any.
  for i in range(args.warmup + args.steps):
    if args.trace and i == args.warmup:
      jax.profiler.start_trace(args.trace)
    for r in runs.values():
      tic = time.perf_counter()
      r["state"], metrics = r["compiled"](r["state"], r["frozen"], r["batch"])
      jax.block_until_ready((r["state"], metrics))
      if i >= args.warmup:
        r["times"].append(time.perf_counter() - tic)
    if args.trace and i == args.warmup:
      jax.profiler.stop_trace()

  rates = machine_rates(args.matmul_n, jnp.bfloat16 if args.bf16 else jnp.float32)
  peak = peak_flops(device, args.bf16) if device.platform != "cpu" else None
  rows = [r["row"] for r in runs.values()]
  for r in runs.values():
    row = r["row"]
    if r["times"]:
      row["step_s"] = statistics.median(r["times"])
      row["min_s"] = min(r["times"])
      row["times_s"] = [round(t, 4) for t in r["times"]]
      row["img_s"] = args.batch / row["step_s"]
    row["mm_limit_s"] = row["gflop"] * 1e9 / rates["matmul_flops"]
    row["mem_limit_s"] = row["gbyte"] * 1e9 / rates["copy_bytes_s"]
    if device.platform != "cpu" and "step_s" in row:
      row["mfu"] = row["gflop"] * 1e9 / row["step_s"] / (peak or rates["matmul_flops"])
  base = next((row for row in rows if row["method"] == "full"), None)
  if base is not None:
    for row in rows:
      if "step_s" in row and "step_s" in base:
        row["time_ratio"] = row["step_s"] / base["step_s"]
      if "mem_mb" in row and "mem_mb" in base:
        row["mem_ratio"] = row["mem_mb"] / base["mem_mb"]
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": {"platform": device.platform, "device": str(getattr(device, "device_kind", "")),
                  "cpus": os.cpu_count(), "processor": platform.processor(),
                  "jax": jax.__version__, "load_before": load_before,
                  "load_after": os.getloadavg(), **rates,
                  "peak_flops": peak},
      "settings": {"model": args.model, "batch": args.batch, "steps": args.steps,
                   "warmup": args.warmup, "bf16": args.bf16, "drop_path": args.drop_path,
                   "accum": accums, "variants": variants},
      "rows": rows,
  }


COLUMNS = (("method", "{}"), ("step_s", "{:.3f}"), ("min_s", "{:.3f}"),
           ("time_ratio", "{:.2f}x"),
           ("img_s", "{:.2f}"), ("mem_mb", "{:.0f}"), ("mem_ratio", "{:.2f}x"),
           ("trainable", "{:,}"), ("opt_state", "{:,}"), ("gflop", "{:.1f}"),
           ("mm_limit_s", "{:.3f}"), ("gbyte", "{:.2f}"), ("mem_limit_s", "{:.3f}"),
           ("mfu", "{:.1%}"))


def table(result: dict) -> str:
  rows = result["rows"]
  cols = [(k, f) for k, f in COLUMNS if any(k in r for r in rows)]
  lines = ["| " + " | ".join(k for k, _ in cols) + " |",
           "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(f.format(r[k]) if k in r else "" for k, f in cols) + " |")
  m = result["machine"]
  lines.append("")
  lines.append(f"{m['platform']} {m['device']} ({m['cpus']} cpus), jax {m['jax']}; "
               f"load {m['load_before'][0]:.2f} -> {m['load_after'][0]:.2f}; "
               f"matmul {m['matmul_n']}^3: {m['matmul_flops'] / 1e9:.0f} GFLOP/s; "
               f"copy {m['copy_bytes_s'] / 1e9:.1f} GB/s")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="ViT-B_16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--methods", default=DEFAULT_METHODS)
  p.add_argument("--accum", default="1", help="comma list of train.accum_steps values")
  p.add_argument("--bf16", action="store_true", help="bfloat16 compute (f32 master weights)")
  p.add_argument("--image_size", type=int, default=0, help="0 = the model's own")
  p.add_argument("--drop_path", type=float, default=0.1)
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--variants", default="",
                 help='JSON {name: {xla option: value}}: each method once per variant, e.g. '
                      '\'{"": {}, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}\'')
  p.add_argument("--trace", default="", help="write a jax.profiler trace of the first "
                 "timed round to this directory (TensorBoard / Perfetto)")
  p.add_argument("--out", default="")
  args = p.parse_args()
  result = run(args)
  print(table(result))
  if args.out:
    write_json(args.out, result)


if __name__ == "__main__":
  main()
