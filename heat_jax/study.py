"""A small study: several methods x tasks x seeds on one backbone, and a table.

Used by the offline demo (`configs/demo.py`): the backbone is pretrained on the
synthetic pre-training mixture; the demo's own (default `pretrain` settings) ships in
`heat_jax/assets/demo_backbone.npz` (made by `tools/make_demo_backbone.py`, which runs
this very pretraining), other settings are pretrained once and cached under
`$HEAT_JAX_CACHE/demo`. Then every
variant is one `experiment.run` in `workdir/<task>/<variant>/seed<k>`, started afresh
(the directory is cleared first). Seed k sets the run seed, the random head set of
`heat_random` and the random scoring classifier of `heat_rnd_cls*`. Compiled XLA
programs are cached under `$HEAT_JAX_CACHE/demo/xla` (`config.study.compilation_cache`),
since compiling dominates runs this small.

With `config.study.backbone` (a checkpoint name or file, e.g. `dinov2_s14_imgfocus` in
configs/real.py) no backbone is pretrained: every run starts from those weights, and
the tasks come from `config.base.data.source` (`synthetic` or `real`). With
`config.study.ablation_batches > 0` each task's TIS (the `heat` run of seed 0) is also
compared with the loss increase of removing each head alone (`importance.agreement`);
the Spearman correlation goes into every heat row and results.md, and
`importance_<task>.png` / `ablation_<task>.png` are the two maps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from heat_jax import artifacts, experiment, logs
from heat_jax.errors import ConfigError
from heat_jax.io_utils import as_path, cache_dir, remove_tree, write_json, write_text
from heat_jax.models import model_family, model_info

HEARTBEAT_S = 12.0   # a line at least this often during a run (progress bars are off)
BACKBONE_ASSET = "demo_backbone"   # heat_jax/assets/demo_backbone.{npz,json}
HEADER = ("small offline study on procedurally generated tasks (heat_jax demo), "
          "NOT a VTAB result")

# Variant label -> config overrides ("section.field": value). The HEAT variants differ
# in the heads only (same budget, same start: the classifier training starts from is
# `importance.keep_probe`'s, whatever classifier scored the heads):
#   heat / heat_bottom            top / bottom heads scored through the linear probe
#   heat_rnd_cls / ..._bottom     top / bottom heads scored through a random classifier
#   heat_random                   random heads (no scores)
#   heat_probe_init               heat, but training starts from the probe (keep_probe)
VARIANTS: dict[str, dict[str, Any]] = {
    "heat": {"method.name": "heat", "heat.select": "top"},
    "heat_random": {"method.name": "heat", "heat.select": "random"},
    "heat_bottom": {"method.name": "heat", "heat.select": "bottom"},
    "heat_rnd_cls": {"method.name": "heat", "heat.select": "top",
                     "importance.classifier": "random"},
    "heat_rnd_cls_bottom": {"method.name": "heat", "heat.select": "bottom",
                            "importance.classifier": "random"},
    "heat_probe_init": {"method.name": "heat", "heat.select": "top",
                        "importance.keep_probe": True},
    "lora": {"method.name": "lora"},
    "linear": {"method.name": "linear"},
    "full": {"method.name": "full"},
    # Not in the default list; ask with variants=...+hst (its side network dwarfs ViT-demo).
    "hst": {"method.name": "hst"},
    # Not in the default list (configs/demo.py): ask for it, e.g. variants=heat+kadaptation.
    "kadaptation": {"method.name": "kadaptation"},
}
# (variant, control, what the pair shows) lines under the table, where both ran.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("heat", "heat_random", "probe-scored top heads vs random heads"),
    ("heat", "heat_bottom", "probe-scored top vs bottom heads"),
    ("heat_rnd_cls", "heat_random", "random-classifier top heads vs random heads"),
    ("heat_rnd_cls", "heat_rnd_cls_bottom", "random-classifier top vs bottom heads"),
    ("heat", "heat_rnd_cls", "top heads: probe vs random-classifier scoring"),
    ("heat_probe_init", "heat", "training from the probe vs from the zero classifier"),
)


def backbone_key(config: ml_collections.ConfigDict) -> str:
  """The hash of what makes the demo backbone: the model and `config.pretrain`."""
  model = config.base.model
  spec = json.dumps({"model": model.name, "image_size": model.image_size,
                     **config.pretrain.to_dict()}, sort_keys=True)
  return hashlib.sha256(spec.encode()).hexdigest()[:12]


def packaged_backbone(key: str) -> Optional[tuple[str, dict]]:
  """(path, info) of the backbone shipped in heat_jax/assets when it was made with
  `key` (tools/make_demo_backbone.py writes it), else None."""
  folder = Path(str(resources.files("heat_jax.assets")))
  path, info_path = folder / f"{BACKBONE_ASSET}.npz", folder / f"{BACKBONE_ASSET}.json"
  if not (path.is_file() and info_path.is_file()):
    return None
  info = json.loads(info_path.read_text())
  return (str(path), info) if info.get("key") == key else None


def pretrained_backbone(config: ml_collections.ConfigDict, *, packaged: bool = True) -> str:
  """Path of the demo backbone: the packaged one when it was made by this very
  `config.pretrain` (`packaged`), else pretrained once and cached."""
  p = config.pretrain
  model = config.base.model
  key = backbone_key(config)
  merged = artifacts.merged_filename(model_family(model.name))   # merged.npz for a ViT
  path = cache_dir("demo") / f"backbone-{model.name}-{key}{os.path.splitext(merged)[1]}"
  info_path = path.with_suffix(".json")
  shipped = packaged_backbone(key) if packaged else None
  if shipped is not None:
    logging.info(f"using the packaged pretrained backbone {shipped[0]} ({p.steps} steps, "
                 f"made by tools/make_demo_backbone.py; held-out pretraining accuracy "
                 f"{shipped[1]['test_top1']:.3f})")
    return shipped[0]
  if path.exists():
    note = ""
    if info_path.exists():
      top1 = json.loads(info_path.read_text())["test_top1"]
      note = f" (held-out pretraining accuracy {top1:.3f})"
    logging.info(f"using cached pretrained backbone {path}{note}")
    return str(path)
  check_pretrain(p)
  logging.info(f"pretraining the demo backbone ({p.steps} steps, once; cached at {path})")
  pre = pretraining_config(config)
  workdir = str(cache_dir("demo") / f"pretrain-{key}")
  shutil.rmtree(workdir, ignore_errors=True)   # leftovers of an interrupted pretraining
  results = experiment.run(pre, workdir)
  logging.info(f"pretraining accuracy on held-out mixture: {results['test_top1']:.3f}")
  write_json(info_path, {"test_top1": results["test_top1"], "steps": results["steps"],
                         "wall_time_s": results["wall_time_s"], "pretrain": p.to_dict()})
  os.replace(os.path.join(workdir, merged), path)
  shutil.rmtree(workdir, ignore_errors=True)
  return str(path)


def pretraining_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config of the demo backbone's pretraining (`config.pretrain`): full
  fine-tuning of a fresh model on the synthetic pre-training mixture."""
  p = config.pretrain
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
  pre.train.progress = True   # the longest phase: a progress bar, not silence
  pre.optim.lr = p.lr
  pre.optim.warmup_epochs = 1
  pre.optim.weight_decay = p.weight_decay
  return pre


# The first steps of the pretraining, recorded in the asset's JSON: a fingerprint of
# the code that makes the backbone that holds on any machine (1500 steps amplify
# rounding: the same command ends up ~0.4 apart in the weights on another CPU).
TRACE_STEPS = 50


def pretraining_trace(config: ml_collections.ConfigDict, workdir: str,
                      steps: int = TRACE_STEPS) -> dict[str, Any]:
  """The first `steps` steps of the very pretraining (same data order, model, optimizer
  and 1500-step schedule): {'steps', 'loss' (each step's training loss), 'param_norms'
  (every parameter's L2 norm after them)}. Made with the asset, checked by tests."""
  pre = pretraining_config(config)
  pre.train.progress = False
  method = experiment.validate(pre)
  p = experiment.prepare(pre, workdir, method, experiment.config_fingerprint(pre),
                         logging.debug)
  try:
    if steps > p.steps_per_epoch:
      raise ConfigError(f"a trace of {steps} steps must fit in the first epoch "
                        f"({p.steps_per_epoch} steps)")
    state, loss = p.state, []
    batches = p.trainer.feed.epoch(p.task.train, pre.train.batch_size, seed=pre.seed,
                                   epoch=0)
    for _ in range(steps):
      state, metrics = p.trainer.train_step(state, next(batches))
      loss.append(float(metrics["loss"]))
    params = p.trainer.full_params(state)
  finally:
    p.ckpt.close()
  flat = traverse_util.flatten_dict(params, sep="/")
  return {"steps": steps, "loss": loss,
          "param_norms": {k: float(np.linalg.norm(np.asarray(v, np.float64)))
                          for k, v in sorted(flat.items())}}


def check_pretrain(p: ml_collections.ConfigDict) -> None:
  if p.steps < 1 or p.batch_size < 1 or p.num_images < p.batch_size or p.lr <= 0:
    raise ConfigError(f"config.pretrain needs steps >= 1, 1 <= batch_size <= num_images and "
                      f"lr > 0 (got steps={p.steps}, batch_size={p.batch_size}, "
                      f"num_images={p.num_images}, lr={p.lr}); e.g. "
                      "configs/demo.py:pretrain_steps=1500,pretrain_images=20000")


def _names(value: str, field: str, valid: Any, shown: Any) -> list[str]:
  """The non-empty, known, distinct names of a comma list `config.study.<field>`."""
  names = [n.strip() for n in str(value).split(",") if n.strip()]
  hint = f"join names from {', '.join(shown)} with '+' (configs/demo.py:{field}=a+b)"
  if not names:
    raise ConfigError(f"config.study.{field} is empty; {hint}")
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ConfigError(f"config.study.{field}: unknown {', '.join(map(repr, unknown))}; {hint}")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ConfigError(f"config.study.{field} lists {', '.join(twice)} more than once")
  return names


def variant_config(config: ml_collections.ConfigDict, task: str, variant: str, seed: int,
                   backbone: str = "") -> ml_collections.ConfigDict:
  """The run config of one (task, variant, seed) of the study."""
  c = copy.deepcopy(config.base)
  c.model.pretrained = backbone
  c.data.task = task
  c.seed = seed
  c.heat.select_seed = seed   # heat_random: another random head set per seed
  c.data.synthetic_seed = config.study.data_seed
  c.update_from_flattened_dict(VARIANTS[variant])
  overrides = config.study.get("overrides") or {}   # per-variant fields, e.g. full's lr
  if overrides.get(variant):
    c.update(overrides[variant])
  return c


def validate(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """(tasks, variants) after checking every value of the study before any work.

  ConfigError (one line) for unknown or repeated tasks / variants, seeds < 1, a bad
  data seed, pretraining settings, model, epochs, budget, strategy or data sizes, so
  that nothing (not even the pretraining) starts on a config that would fail later.
  """
  from heat_jax import importance
  from heat_jax.data import check_config
  from heat_jax.models import create_model, head_layout, model_info
  s = config.study
  valid_tasks, shown_tasks, check_sizes = _task_source(config.base.data.source)
  tasks = _names(s.tasks, "tasks", valid_tasks, shown_tasks)
  variants = _names(s.variants, "variants", VARIANTS, VARIANTS)
  for field, least in (("seeds", 1), ("data_seed", 0)):
    value = s.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(f"config.study.{field}={value!r} must be an integer >= {least}")
  if not s.get("backbone"):
    check_pretrain(config.pretrain)
  layout = head_layout(create_model(config.base.model.name, 2))   # ConfigError if unknown
  for variant in variants:
    c = variant_config(config, tasks[0], variant, 0)
    experiment.validate(c)
    if c.method.name == "heat":
      importance.check_strategy(c.importance.strategy)
      if c.heat.scope not in importance.SCOPES:
        raise ConfigError(f"config.heat.scope={c.heat.scope!r} is not one of "
                          f"{importance.SCOPES}")
      units = ([layout.total_heads] if c.heat.scope == "global"
               else list(layout.heads_per_layer))
      try:
        for n in units:
          importance.heads_to_keep(n, c.heat.budget, c.heat.deactivate,
                                   where=f"{c.model.name} ({c.heat.scope} scope)")
      except ConfigError as e:
        raise ConfigError(f"config.heat (demo: budget=...): {e.one_line()}") from None
  for task in tasks:
    c = variant_config(config, task, variants[0], 0)
    check_config(c.data, auto_value_range=model_info(c.model.name).value_range)
    sizes = check_sizes(c.data)
    n_train = sizes["train800"] + (sizes["val200"] if c.data.train_split != "train800" else 0)
    if c.train.batch_size > n_train:
      raise ConfigError(f"config.base.train.batch_size={c.train.batch_size} is larger than "
                        f"the {n_train} training images of {task}; lower it")
  return tasks, variants


@contextlib.contextmanager
def heartbeat(what: str, every: float = HEARTBEAT_S) -> Iterator[None]:
  """Logs `what: still running (Ns)` every `every` seconds until the block ends, so a
  long run (compiling, scoring, training: all quiet in a study) never looks stuck."""
  stop, start = threading.Event(), time.time()

  def beat() -> None:
    while not stop.wait(every):
      logging.info(f"{what}: still running ({time.time() - start:.0f}s)")

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def _task_source(source: str) -> tuple[Any, Any, Any]:
  """(valid task names, names shown in errors, size check) of a study's data source."""
  if source == "real":
    from heat_jax.data import real_images
    return real_images.TASKS, list(real_images.TASKS), real_images.check_config
  from heat_jax.data import synthetic
  return synthetic.GENERATORS, synthetic.DOWNSTREAM_TASKS, synthetic.check_config


def tis_agreement(config: ml_collections.ConfigDict, task: str, run_dir: str,
                  backbone: str, out_dir: str) -> dict:
  """The heat run's TIS against removing each head alone, on the same training data
  and through the same scoring classifier (`importance.agreement.compare`)."""
  from heat_jax import importance
  from heat_jax.data import build_task
  from heat_jax.importance import agreement
  from heat_jax.methods.heat import scoring_params
  c = variant_config(config, task, "heat", 0, backbone)
  scores, selected, _ = importance.load_importance(run_dir)
  t = build_task(c.data, image_size=c.model.image_size,
                 auto_value_range=model_info(c.model.name).value_range)
  model, _ = experiment.build_model(c, c.data.num_classes or t.num_classes)
  params, state, _ = experiment.load_weights(c, model)
  imp = c.importance

  def batches():
    return t.train.batches(imp.batch_size, shuffle=False, pad=True)

  scored, _ = scoring_params(model, params, batches(), classifier=imp.classifier,
                             seed=int(c.seed), l2=float(imp.probe_l2), model_state=state)
  n = int(config.study.ablation_batches)
  tic = time.time()
  ablation = importance.ablation_scores(model, scored, batches(), num_batches=n,
                                        model_state=state, progress=False)
  valid = importance.head_layout(model).valid
  result = agreement.compare(scores, ablation, valid, k=int(selected.sum()))
  result.update(ablation_images=min(n * imp.batch_size, t.train.num_examples),
                ablation_seconds=round(time.time() - tic, 1))
  importance.plot_importance(os.path.join(out_dir, f"importance_{task}.png"), scores,
                             selected, valid=valid,
                             title=f"{task}: TIS ({imp.strategy}); red: heads kept by heat")
  importance.plot_importance(os.path.join(out_dir, f"ablation_{task}.png"), ablation,
                             selected, valid=valid,
                             title=f"{task}: loss increase when the head alone is removed")
  np.save(os.path.join(out_dir, f"ablation_{task}.npy"), ablation, allow_pickle=False)
  return result


def enable_compilation_cache() -> None:
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
  logging.info(f"XLA compilation cache: {path}")


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (task, variant, seed), writes results.json / results.md, prints the table.

  The table (results.md) is the study's output: it goes to stdout. Progress goes to
  absl.logging (stderr); each run's own messages are DEBUG (`--verbosity=1`).
  """
  logs.setup()
  start = time.time()
  s = config.study
  tasks, variants = validate(config)   # before any directory, pretraining or run
  logging.info(f"{s.get('title') or HEADER}: {config.base.model.name}, tasks "
               f"{', '.join(tasks)}; {len(variants)} variants x {s.seeds} seed(s)")
  as_path(workdir).mkdir(parents=True, exist_ok=True)   # local or gs://
  if s.get("compilation_cache", True):
    enable_compilation_cache()
  backbone = s.get("backbone") or pretrained_backbone(config)
  rows, agreements = [], {}
  memo: dict = {}   # HEAT's scores, shared by the heat variants of a task and seed
  for task in tasks:
    for seed in range(s.seeds):
      for variant in variants:
        c = variant_config(config, task, variant, seed, backbone)
        run_dir = os.path.join(workdir, task, variant, f"seed{seed}")
        remove_tree(run_dir)   # a study always runs afresh
        tic = time.time()
        with heartbeat(f"{task} {variant} seed {seed}"):
          r = experiment.run(c, run_dir, quiet=True, memo=memo)
        rows.append({"task": task, "variant": variant, "seed": seed,
                     "test_top1": r["test_top1"],
                     "heads_selected": r["method_info"].get("heads_selected"),
                     "trainable_params": r["trainable_params"],
                     "trainable_params_no_head": r["trainable_params_no_head"],
                     "seconds": round(time.time() - tic, 2)})
        logging.info(f"{task:<20} {variant:<12} seed {seed}: test top-1 "
            f"{r['test_top1']:.3f}  ({rows[-1]['seconds']:.1f}s)")
        write_json(os.path.join(workdir, "results.json"), rows)   # so far (atomic)
    if s.get("ablation_batches", 0) and "heat" in variants:
      agreements[task] = tis_agreement(config, task, os.path.join(workdir, task, "heat",
                                                                  "seed0"), backbone, workdir)
      logging.info(f"{task}: TIS vs single-head ablation {agreements[task]}")
      for row in rows:   # the heads heat ranks are the same for every seed and variant
        if row["task"] == task and VARIANTS[row["variant"]]["method.name"] == "heat":
          row.update(agreements[task])
  table = format_table(rows, tasks, variants)
  b = config.base
  title = s.get("title") or HEADER
  what = (f"{b.model.name} from {backbone}" if s.get("backbone") else
          f"{b.model.name} pretrained for {config.pretrain.steps} steps on the synthetic "
          f"mixture")
  n_train = (b.data.num_train - b.data.num_val if b.data.train_split == "train800"
             else b.data.num_train)
  header = (f"{title[0].upper()}{title[1:]}.\n\n"
            f"{what} at {b.model.image_size}px; {b.train.epochs} epochs on {n_train} "
            f"images per task; HEAT "
            f"budget {b.heat.budget:g} heads{' per layer' if b.heat.scope == 'layer' else ''} "
            f"({b.heat.scope} ranking, TIS strategy '{b.importance.strategy}' through the "
            f"'{b.importance.classifier}' classifier"
            f"{', training from the probe' if b.importance.keep_probe else ''}); test top-1 %, "
            f"mean ± std over {s.seeds} seed(s).\n\n")
  footer = "".join(f"\n{line}" for line in compare_controls(rows, tasks)
                   + agreement_lines(agreements))
  write_json(os.path.join(workdir, "results.json"), rows)
  write_text(os.path.join(workdir, "results.md"), header + table + "\n" + footer.lstrip("\n")
             + ("\n" if footer else ""))
  print("\n" + header + table + ("\n" + footer if footer else ""), flush=True)
  logging.info(f"total {time.time() - start:.0f}s; results in {workdir}")
  return rows


def agreement_lines(agreements: dict[str, dict]) -> list[str]:
  """results.md lines: how well TIS ranks the heads against single-head ablation."""
  lines = []
  for task, a in agreements.items():
    k = next(key[3:-8] for key in a if key.startswith("top") and key.endswith("_overlap"))
    lines.append(f"{task}: Spearman(TIS, loss increase when the head alone is removed) = "
                 f"{a['spearman_tis_ablation']:+.3f} (vs |increase|: "
                 f"{a['spearman_tis_abs_ablation']:+.3f}; {a['ablation_images']} training "
                 f"images); the top-{k} TIS heads hold {a[f'top{k}_overlap']} of the top-{k} "
                 f"by ablation; mean increase when removed: top-{k} TIS "
                 f"{a['ablation_top_tis_mean']:+.4f}, bottom-{k} "
                 f"{a['ablation_bottom_tis_mean']:+.4f}, all {a['ablation_mean']:+.4f}")
  return lines


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


def compare_controls(rows: list[dict], tasks: list[str],
                     pairs: tuple[tuple[str, str, str], ...] = COMPARISONS) -> list[str]:
  """Lines like 'heat > heat_random on 3 of 4 tasks (...)' for the pairs that ran."""
  def mean(t: str, v: str) -> float | None:
    acc = [r["test_top1"] for r in rows if r["task"] == t and r["variant"] == v]
    return float(np.mean(acc)) if acc else None

  lines = []
  for method, control, what in pairs:
    found = [(t, mean(t, method), mean(t, control)) for t in tasks]
    found = [(t, a, b) for t, a, b in found if a is not None and b is not None]
    if found:
      wins = [t for t, a, b in found if a > b]
      gap = 100 * np.mean([a - b for _, a, b in found])
      lines.append(f"{method} > {control} on {len(wins)} of {len(found)} tasks "
                   f"(mean {gap:+.1f} points; {what})"
                   + (f": {', '.join(wins)}" if wins else ""))
  return lines
