"""Segmentation: parameter counts (no weights) and the measured cost of one train step.

Counts: for each method x decoder on a model at a size (default ViT-B/16 at 512, 150
classes) the parameter tree comes from `jax.eval_shape` of the model's init (nothing is
allocated or downloaded); `trainable` is the method's mask (HEAT: the decoder plus its
selected heads, which depend on the data: shown without them), split into the parts
backbone / hst side network / neck / decoder / auxiliary head.

Step: one jitted, donated `Trainer` step (AdamW, the method's mask, the segmentation
loss with the auxiliary head) on a random batch at `--step_size` (the full 512 setting
does not fit this 2-core CPU's time); reports the compile time, the median of
`--steps` steps after one warm-up step, the step's FLOPs and bytes (`cost_analysis`)
and the floor they set on this machine: `mm_limit_s` = FLOPs / the measured large-matmul
rate, `mem_limit_s` = bytes / the measured copy bandwidth (`bench/step.py`'s probe).

  python bench/seg_cost.py                        # counts at 512 + steps at 128 px
  python bench/seg_cost.py --step_model ViT-B_16 --step_size 128 --batch 2 --steps 3
  python bench/seg_cost.py --steps 2 --step_size 512 --batch 1 --step_methods linear
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from heat_jax.configs.common import base_config
from heat_jax.experiment import build_model
from heat_jax.methods import MethodContext, get_method
from heat_jax.tasks import get_task_kind
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer

PARTS = (("hst side", lambda k: k.split("/")[0] in ("hst_side", "hst_meta")),
         ("neck", lambda k: k.startswith("head/neck/")),
         ("decode head", lambda k: k.startswith("head/decode/")),
         ("aux head", lambda k: k.startswith("head/aux/")),
         ("backbone", lambda k: True))


def config_for(method: str, decoder: str, model: str, size: int, classes: int):
  c = base_config()
  c.model.name, c.model.image_size, c.model.pretrained = model, size, ""
  c.data.source, c.data.num_classes = "ade20k", classes
  c.method.name = method
  c.task_kind = "segmentation"
  c.seg.decoder = decoder
  c.seg.channels = 512 if decoder == "upernet" else 256
  c.seg.aux_weight = 0.4 if decoder == "upernet" else 0.0
  c.seg.crop = size
  return c


def shapes(c):
  method = get_method(c)
  model, _ = build_model(c, c.data.num_classes, method.extensions())
  size = c.model.image_size
  tree = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, size, size, 3))),
                        jax.random.key(0))
  return method, model, tree["params"]


def counts(method_name: str, decoder: str, model: str, size: int, classes: int) -> dict:
  c = config_for(method_name, decoder, model, size, classes)
  method, model_, params = shapes(c)
  flat = partition.flatten(params)
  if method_name == "heat":   # the selection needs data: count the decoder part only
    mask = {k: partition.is_head(k) for k in flat}
  else:
    mask = partition.flatten(method.trainable_mask(
        MethodContext(config=c, model=model_, params=params)))
  out = {"method": method_name, "decoder": decoder, "total": 0, "trainable": 0}
  for k, v in flat.items():
    n = int(np.prod(v.shape))
    part = next(name for name, test in PARTS if test(k))
    out["total"] += n
    out[part] = out.get(part, 0) + n
    if bool(np.any(mask[k])):
      out["trainable"] += n
  return out


def step_cost(method_name: str, decoder: str, model: str, size: int, batch: int,
              steps: int, classes: int) -> dict:
  c = config_for(method_name, decoder, model, size, classes)
  if method_name == "heat":
    c.method.name = "linear"   # a fixed, data-free stand-in: the decoder only
  method, model_, _ = shapes(c)
  rng = jax.random.key(0)
  x = jnp.zeros((1, size, size, 3))
  variables = jax.jit(model_.init)(rng, x)
  params = jax.device_get(variables["params"])
  state = {k: v for k, v in variables.items() if k != "params"}
  mask = method.trainable_mask(MethodContext(config=c, model=model_, params=params))
  trainer = Trainer(model_, params, mask, c.optim, total_steps=100, steps_per_epoch=10,
                    model_state=state, task_kind=get_task_kind("segmentation", c))
  r = np.random.default_rng(0)
  data = {"image": r.standard_normal((batch, size, size, 3)).astype(np.float32),
          "label": r.integers(0, classes, (batch, size, size)).astype(np.int32),
          "mask": np.ones((batch,), np.float32)}
  s = trainer.initial_state()
  device_batch = trainer.put_batch(data)
  tic = time.time()
  compiled = trainer._train_step.lower(s, trainer.frozen, device_batch).compile()
  compile_s = time.time() - tic
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  tic = time.time()
  s, m = compiled(s, trainer.frozen, device_batch)   # warm-up (the step is donated)
  jax.block_until_ready(m["loss"])
  first_s = time.time() - tic
  times = []
  for _ in range(steps):
    tic = time.time()
    s, m = compiled(s, trainer.frozen, device_batch)
    jax.block_until_ready(m["loss"])
    times.append(time.time() - tic)
  return {"method": method_name, "decoder": decoder, "model": model, "size": size,
          "batch": batch, "compile_s": round(compile_s, 2), "first_step_s": round(first_s, 2),
          "step_s": round(statistics.median(times), 3),
          "gflop": round(float(cost.get("flops", float("nan"))) / 1e9, 1),
          "gbyte": round(float(cost.get("bytes accessed", float("nan"))) / 1e9, 2)}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="ViT-B_16")
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--classes", type=int, default=150)
  ap.add_argument("--methods", default="full,lora,linear,hst,heat")
  ap.add_argument("--decoders", default="upernet,fpn")
  ap.add_argument("--step_model", default="ViT-B_16")
  ap.add_argument("--step_size", type=int, default=128)
  ap.add_argument("--step_methods", default="hst,lora,linear")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  rows = [counts(m, d, a.model, a.size, a.classes) for d in a.decoders.split(",")
          for m in a.methods.split(",")]
  print(f"| method | decoder | trainable | total | backbone | hst side | neck | decoder | aux |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['method']} | {r['decoder']} | {r['trainable']:,} | {r['total']:,} | "
          f"{r.get('backbone', 0):,} | {r.get('hst side', 0):,} | {r.get('neck', 0):,} | "
          f"{r.get('decode head', 0):,} | {r.get('aux head', 0):,} |")
  steps = []
  if a.steps > 0:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step import machine_rates   # bench/step.py: the matmul / copy probe
    rates = machine_rates(2048, jnp.float32)
    print(json.dumps({"matmul_gflop_s": round(rates["matmul_flops"] / 1e9, 1),
                      "copy_gbyte_s": round(rates["copy_bytes_s"] / 1e9, 1)}), flush=True)
    for m in a.step_methods.split(","):
      row = step_cost(m, "upernet", a.step_model, a.step_size, a.batch, a.steps, a.classes)
      row["mm_limit_s"] = round(row["gflop"] * 1e9 / rates["matmul_flops"], 3)
      row["mem_limit_s"] = round(row["gbyte"] * 1e9 / rates["copy_bytes_s"], 3)
      row["of_limit"] = round(max(row["mm_limit_s"], row["mem_limit_s"]) / row["step_s"], 3)
      steps.append(row)
      print(json.dumps(steps[-1]), flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"counts": rows, "steps": steps}, f, indent=1)


if __name__ == "__main__":
  main()
