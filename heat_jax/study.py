"""A small study: several methods x tasks x seeds on one backbone, and a table.

Used by the offline demo (`configs/demo.py`): the backbone is pretrained once on the
synthetic pre-training mixture (cached under `$HEAT_JAX_CACHE/demo`), then every
variant is one `experiment.run` in `workdir/<task>/<variant>/seed<k>`, started afresh
(the directory is cleared first). Seed k sets the run seed and the random head set of
`heat_random`. Compiled XLA programs are cached under `$HEAT_JAX_CACHE/demo/xla`
(`config.study.compilation_cache`), since compiling dominates runs this small.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from typing import Any

import ml_collections
import numpy as np

from heat_jax import experiment
from heat_jax.io_utils import cache_dir, write_json, write_text

HEADER = ("small offline study on procedurally generated tasks (heat_jax demo), "
          "NOT a VTAB result")

# Variant label -> config overrides ("section.field": value).
VARIANTS: dict[str, dict[str, Any]] = {
    "heat": {"method.name": "heat", "heat.select": "top"},
    "heat_random": {"method.name": "heat", "heat.select": "random"},
    "heat_bottom": {"method.name": "heat", "heat.select": "bottom"},
    "lora": {"method.name": "lora"},
    "linear": {"method.name": "linear"},
    "full": {"method.name": "full"},
}


def pretrained_backbone(config: ml_collections.ConfigDict, log=print) -> str:
  """Path of the demo backbone, pretraining it (once, cached) if needed."""
  p = config.pretrain
  model = config.base.model
  spec = json.dumps({"model": model.name, "image_size": model.image_size, **p.to_dict()},
                    sort_keys=True)
  key = hashlib.sha256(spec.encode()).hexdigest()[:12]
  path = cache_dir("demo") / f"backbone-{model.name}-{key}.npz"
  info_path = path.with_suffix(".json")
  if path.exists():
    note = ""
    if info_path.exists():
      top1 = json.loads(info_path.read_text())["test_top1"]
      note = f" (held-out pretraining accuracy {top1:.3f})"
    log(f"[study] using cached pretrained backbone {path}{note}")
    return str(path)
  if p.num_images < p.batch_size or p.steps < 1:
    from heat_jax.errors import ConfigError
    raise ConfigError(f"config.pretrain needs steps >= 1 and num_images >= batch_size "
                      f"(got {p.steps}, {p.num_images}, {p.batch_size})")
  log(f"[study] pretraining the demo backbone ({p.steps} steps, once; cached at {path})")
  pre = copy.deepcopy(config.base)
  pre.method.name = "full"
  pre.model.pretrained = ""
  pre.data.source = "synthetic"
  pre.data.task = "pretraining"
  pre.data.num_classes = 0
  pre.data.num_train = p.num_images
  pre.data.num_val = 0
  pre.data.num_test = 500
  pre.data.train_split = "train800"
  pre.data.synthetic_seed = p.seed
  pre.seed = p.seed
  pre.train.batch_size = p.batch_size
  steps_per_epoch = p.num_images // p.batch_size
  pre.train.epochs = -(-p.steps // steps_per_epoch)
  pre.train.max_steps = p.steps
  pre.train.eval_every_epochs = 10_000
  pre.train.export_merged = True
  pre.train.resume = False
  pre.optim.lr = p.lr
  pre.optim.warmup_epochs = 1
  pre.optim.weight_decay = p.weight_decay
  workdir = str(cache_dir("demo") / f"pretrain-{key}")
  shutil.rmtree(workdir, ignore_errors=True)   # leftovers of an interrupted pretraining
  results = experiment.run(pre, workdir, log=log)
  log(f"[study] pretraining accuracy on held-out mixture: {results['test_top1']:.3f}")
  write_json(info_path, {"test_top1": results["test_top1"], "steps": results["steps"],
                         "wall_time_s": results["wall_time_s"], "pretrain": p.to_dict()})
  os.replace(os.path.join(workdir, "merged.npz"), path)
  shutil.rmtree(workdir, ignore_errors=True)
  return str(path)


def enable_compilation_cache(log=print) -> None:
  """Persists XLA executables under `$HEAT_JAX_CACHE/demo/xla` (unless one is set).

  The study's runs are small, so compiling dominates: every run builds fresh jitted
  steps, and runs with the same program (a method on tasks with the same class count,
  any method across seeds) then reuse the compiled executable instead of recompiling.
  """
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  path = cache_dir("demo", "xla")
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  log(f"[study] XLA compilation cache: {path}")


def run(config: ml_collections.ConfigDict, workdir: str, log=print) -> list[dict]:
  """Runs every (task, variant, seed) and writes results.json / results.md."""
  start = time.time()
  s = config.study
  tasks = [t for t in s.tasks.split(",") if t]
  variants = [v for v in s.variants.split(",") if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    from heat_jax.errors import ConfigError
    raise ConfigError(f"config.study.variants: unknown {unknown}; use {sorted(VARIANTS)}")
  log(f"[study] {HEADER}: {config.base.model.name}, tasks {', '.join(tasks)}; "
      f"{len(variants)} variants x {s.seeds} seed(s)")
  os.makedirs(workdir, exist_ok=True)
  if s.get("compilation_cache", True):
    enable_compilation_cache(log=log)
  backbone = pretrained_backbone(config, log=log)
  rows = []
  for task in tasks:
    for seed in range(s.seeds):
      for variant in variants:
        c = copy.deepcopy(config.base)
        c.model.pretrained = backbone
        c.data.task = task
        c.seed = seed
        c.heat.select_seed = seed   # heat_random: another random head set per seed
        c.data.synthetic_seed = s.data_seed
        c.update_from_flattened_dict(VARIANTS[variant])
        run_dir = os.path.join(workdir, task, variant, f"seed{seed}")
        shutil.rmtree(run_dir, ignore_errors=True)   # a study always runs afresh
        tic = time.time()
        r = experiment.run(c, run_dir, log=lambda *_: None)
        rows.append({"task": task, "variant": variant, "seed": seed,
                     "test_top1": r["test_top1"], "best_test_top1": r["best_test_top1"],
                     "heads_selected": r["method_info"].get("heads_selected"),
                     "trainable_params": r["trainable_params"],
                     "trainable_params_no_head": r["trainable_params_no_head"],
                     "seconds": round(time.time() - tic, 2)})
        log(f"[study] {task:<20} {variant:<12} seed {seed}: test top-1 "
            f"{r['test_top1']:.3f}  ({rows[-1]['seconds']:.1f}s)")
  table = format_table(rows, tasks, variants)
  b = config.base
  header = (f"{HEADER[0].upper()}{HEADER[1:]}.\n\n"
            f"{b.model.name} pretrained for {config.pretrain.steps} steps on the synthetic "
            f"mixture; {b.train.epochs} epochs on {b.data.num_train} images per task; HEAT "
            f"budget {b.heat.budget:g} heads{' per layer' if b.heat.scope == 'layer' else ''} "
            f"({b.heat.scope} ranking, TIS strategy "
            f"'{b.importance.strategy}'); test top-1 %, mean ± std over {s.seeds} seed(s).\n\n")
  footer = "".join(f"\n{line}" for line in compare_controls(rows, tasks))
  write_json(os.path.join(workdir, "results.json"), rows)
  write_text(os.path.join(workdir, "results.md"), header + table + "\n" + footer.lstrip("\n")
             + ("\n" if footer else ""))
  log("\n" + header + table + ("\n" + footer if footer else ""))
  log(f"\n[study] total {time.time() - start:.0f}s; results in {workdir}")
  return rows


def format_table(rows: list[dict], tasks: list[str], variants: list[str]) -> str:
  """Markdown: one row per variant, mean test top-1 (over seeds) per task."""
  lines = ["| method | " + " | ".join(tasks) + " | mean | trainable (no head) | s/run |",
           "|---" * (len(tasks) + 4) + "|"]
  for v in variants:
    cells, means = [], []
    for t in tasks:
      acc = [r["test_top1"] for r in rows if r["task"] == t and r["variant"] == v]
      if acc:
        means.append(np.mean(acc))
        sd = f" ± {100 * np.std(acc):.1f}" if len(acc) > 1 else ""
        cells.append(f"{100 * np.mean(acc):.1f}{sd}")
      else:
        cells.append("-")
    vr = [r for r in rows if r["variant"] == v]
    params = vr[0]["trainable_params_no_head"] if vr else 0
    secs = np.mean([r["seconds"] for r in vr]) if vr else 0
    mean = f"{100 * np.mean(means):.1f}" if means else "-"
    lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} | {params:,} | {secs:.1f} |")
  return "\n".join(lines)


def compare_controls(rows: list[dict], tasks: list[str], method: str = "heat",
                     controls: tuple[str, ...] = ("heat_random", "heat_bottom")) -> list[str]:
  """Lines like 'heat > heat_random on 3 of 4 tasks (mean over seeds)'."""
  def mean(t: str, v: str) -> float | None:
    acc = [r["test_top1"] for r in rows if r["task"] == t and r["variant"] == v]
    return float(np.mean(acc)) if acc else None

  lines = []
  for control in controls:
    pairs = [(t, mean(t, method), mean(t, control)) for t in tasks]
    pairs = [(t, a, b) for t, a, b in pairs if a is not None and b is not None]
    if pairs:
      wins = [t for t, a, b in pairs if a > b]
      lines.append(f"{method} (top-TIS heads) > {control} (same budget) on {len(wins)} of "
                   f"{len(pairs)} tasks" + (f": {', '.join(wins)}" if wins else ""))
  return lines
