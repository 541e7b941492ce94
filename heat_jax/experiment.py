"""One run: data + model + method -> train -> evaluate -> results and artifacts.

`run(config, workdir)` is what `run.py` and the sweep call. It goes through named
phases, each a function of its own:

  validate   cheap checks of the config; nothing is read or written
  finished?  results.json of this very config exists: report it and stop
  prepare    data, model, weights, the resume point, the trainable mask, the trainer
  train      the loop, from the resume point to the last step
  finalize   final evaluation and checkpoint, adapter / merged exports, results.json

Resume precedence (the run's own checkpoint is the only state ever reused):
  * FINISHED: results.json with this config's fingerprint -> returned as is;
  * AFTER_LAST_STEP: a checkpoint at the last step (killed before results.json) ->
    only `finalize` runs;
  * RESUME: a checkpoint before the last step -> training continues from it, with the
    method's saved state (e.g. the HEAT selection) taken from the checkpoint;
  * FRESH: nothing usable (or `train.resume=False`, which clears the old run first).
A checkpoint of another config is an error, never silently reused.

Multi-process runs (`heat_jax.distributed`): every process runs every phase and
computes the same values; each loads only its rows of a batch; all of them save and
restore the checkpoints; only the primary process writes the other files and logs.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import math
import numbers
import os
import re
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from heat_jax import artifacts, checkpoints, distributed, logs, model_spec
from heat_jax import workdir as workdir_lib
from heat_jax.data import build_task, check_config as check_data_config
from heat_jax.data.base import Task
from heat_jax.errors import CheckpointError, ConfigError, TrainingError
from heat_jax.io_utils import (as_path, read_json, remove_file, remove_tree, sha256_file,
                               write_json)
from heat_jax.methods import Method, MethodContext, get_method
from heat_jax.models import create_model, model_defaults, model_family, model_info
from heat_jax.resize import METHODS as RESIZE_METHODS
from heat_jax.training import partition
from heat_jax.training.checkpointing import TrainCheckpointer
from heat_jax.training.metrics import MetricWriter, NullWriter
from heat_jax.training.optimizer import WD_MASKS
from heat_jax.training.trainer import Trainer, epoch_batches

Log = Callable[[str], Any]
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
# Files a run writes into its workdir (cleared by train.resume=False).
RUN_FILES = (RESULTS_FILE, "metrics.jsonl", "adapter.npz", "adapter.json", "merged.npz",
             "merged.safetensors", "adapter_config.json", "adapter_model.safetensors",
             "importance.npy", "heads.npy", "importance.json", "importance.png")
_RESUME_NEUTRAL = ("train.resume", "train.progress", "train.export_merged")


class Start(enum.Enum):
  """Where a run starts (see the module docstring)."""

  FRESH = "fresh"
  RESUME = "resume"
  AFTER_LAST_STEP = "checkpoint after last step"


# ----------------------------------------------------------------------------- config


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
  """Hash of the config fields that define the run (resume must match it)."""
  flat = _flat(config.to_dict())
  for k in _RESUME_NEUTRAL:
    flat.pop(k, None)
  return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                extensions: tuple = ()) -> tuple[Any, dict]:
  """The linen module for `config.model` with the method's extensions, and its spec."""
  fields = {"image_size": config.model.image_size,
            "drop_path_rate": config.model.drop_path_rate}
  if model_family(config.model.name) == "vit":
    fields["classifier"] = config.model.classifier
  model = create_model(config.model.name, num_classes, extensions=tuple(extensions),
                       **fields, **({"dtype": jnp.bfloat16} if config.train.bf16 else {}))
  return model, model_spec.spec_of(config.model.name, num_classes, fields, extensions)


# ----------------------------------------------------------------------------- validate


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model_config(config: ml_collections.ConfigDict) -> None:
  """config.model against the named model's geometry (no weights are read)."""
  m = config.model
  family = model_family(m.name)            # ConfigError for an unknown name
  size = m.image_size
  if not _is_int(size) or size < 1:
    raise ConfigError(f"config.model.image_size must be a positive integer, got {size!r}")
  patch = int(model_defaults(m.name).get("patch_size", 1))
  if size % patch:
    near = max(patch, round(size / patch) * patch)
    raise ConfigError(f"config.model.image_size={size} is not a multiple of {m.name}'s "
                      f"patch size {patch}; use e.g. {near}")
  if not 0 <= m.drop_path_rate < 1:
    raise ConfigError(f"config.model.drop_path_rate must be in [0, 1), got {m.drop_path_rate}")
  if family == "vit":
    if m.classifier not in ("token", "gap"):
      raise ConfigError(f"config.model.classifier={m.classifier!r} is not token or gap")
    if m.posemb_interpolation not in RESIZE_METHODS:
      raise ConfigError(f"config.model.posemb_interpolation={m.posemb_interpolation!r} is "
                        f"not one of {RESIZE_METHODS}")
  pretrained = str(m.pretrained or "")
  if pretrained and not (os.path.isfile(pretrained) or re.match(r"(https?|gs)://", pretrained)
                         or checkpoints.get_checkpoint(pretrained) is not None):
    if os.path.isdir(pretrained):
      raise CheckpointError(f"config.model.pretrained={pretrained} is a directory; pass the "
                            "checkpoint file in it (.npz, .safetensors, .pth)")
    checkpoints.resolve_checkpoint(pretrained)   # raises the not-found / unknown-name line


def validate(config: ml_collections.ConfigDict) -> Method:
  """Cheap checks that fail before any data or weights are touched; returns the method."""
  bad = [k for k, v in _flat(config.to_dict()).items()
         if isinstance(v, float) and not math.isfinite(v)]
  if bad:
    raise ConfigError(f"config.{bad[0]} must be a finite number, got "
                      f"{_flat(config.to_dict())[bad[0]]}")
  if not _is_int(config.seed) or not 0 <= config.seed < 2**32:
    raise ConfigError(f"config.seed must be an integer in [0, 2**32), got {config.seed!r}")
  check_model_config(config)
  t = config.train
  if t.batch_size < 1 or t.eval_batch_size < 1:
    raise ConfigError("config.train.batch_size and eval_batch_size must be >= 1")
  n_dev = jax.device_count()  # every device of every process holds a part of a batch
  where = "" if jax.process_count() == 1 else f" of the {jax.process_count()} processes"
  if t.batch_size % n_dev or t.eval_batch_size % n_dev:
    raise ConfigError(f"batch sizes ({t.batch_size}, {t.eval_batch_size}) must be "
                      f"divisible by the {n_dev} devices{where}")
  if t.accum_steps < 1 or t.batch_size % (t.accum_steps * n_dev):
    raise ConfigError(f"config.train.accum_steps={t.accum_steps} must be >= 1 and divide "
                      f"config.train.batch_size={t.batch_size} into micro-batches that "
                      f"split evenly over the {n_dev} devices{where}")
  if t.epochs < 1:
    raise ConfigError(f"config.train.epochs must be >= 1, got {t.epochs}")
  for name in ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps"):
    if t[name] < 1:
      raise ConfigError(f"config.train.{name} must be >= 1, got {t[name]}")
  if t.max_steps < 0:
    raise ConfigError(f"config.train.max_steps must be >= 0 (0 = no cap), got {t.max_steps}")
  o = config.optim
  if o.lr <= 0:
    raise ConfigError(f"config.optim.lr must be > 0, got {o.lr}")
  for name in ("weight_decay", "clip_norm", "warmup_epochs", "warmup_init_lr", "min_lr"):
    if o[name] < 0:
      raise ConfigError(f"config.optim.{name} must be >= 0, got {o[name]}")
  for name in ("b1", "b2"):
    if not 0 <= o[name] < 1:
      raise ConfigError(f"config.optim.{name} must be in [0, 1), got {o[name]}")
  if o.wd_mask not in WD_MASKS:
    raise ConfigError(f"config.optim.wd_mask={o.wd_mask!r} is not one of {WD_MASKS}")
  check_data_config(config.data, auto_value_range=model_info(config.model.name).value_range)
  method = get_method(config)
  method.validate()
  if t.export_merged and not method.mergeable:
    raise ConfigError(f"config.train.export_merged: method {config.method.name} adds "
                      "modules that cannot be folded into a plain checkpoint; set it False")
  return method


def finished_results(config: ml_collections.ConfigDict, workdir: str,
                     fingerprint: str) -> Optional[dict]:
  """The results of this config if `workdir` holds them (FINISHED), else None."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not config.train.resume or not as_path(path).exists():
    return None
  try:
    results = read_json(path)
  except (OSError, ValueError):
    return None  # unreadable: the run is redone and the file rewritten
  if results.get("fingerprint") != fingerprint:
    raise ConfigError(f"workdir {workdir} holds a finished run with a different config; "
                      "use a new --workdir or --config.train.resume=False")
  artifacts_needed = ["adapter.npz", "adapter.json"]
  if config.train.export_merged:
    artifacts_needed.append(artifacts.merged_filename(model_family(config.model.name)))
  if not all(as_path(os.path.join(workdir, name)).exists() for name in artifacts_needed):
    return None   # e.g. export_merged asked for later: finalize again from the checkpoint
  return results


# ----------------------------------------------------------------------------- prepare


@dataclasses.dataclass
class Prepared:
  """Everything the train and finalize phases need."""

  config: ml_collections.ConfigDict
  workdir: str
  task: Task
  method: Method
  model: Any
  spec: dict
  base: dict
  mask: partition.FlatMask
  counts: tuple[int, int, int]        # trainable, trainable without head, total
  trainer: Trainer
  ckpt: TrainCheckpointer
  start: Start
  state: Any
  meta: dict                          # restored checkpoint meta ({} when fresh)
  steps_per_epoch: int
  total_steps: int
  fingerprint: str


def load_weights(config: ml_collections.ConfigDict, model: Any) -> tuple[dict, dict, dict]:
  """(params, model state, base info): the pretrained file or a seeded random init."""
  init_rng = jax.random.key(config.seed)  # artifacts.load_adapter rebuilds with this key
  base: dict[str, Any] = {"checkpoint": config.model.pretrained or None,
                          "interpolation": config.model.posemb_interpolation,
                          "init_seed": int(config.seed)}
  if config.model.pretrained:
    path = checkpoints.resolve_checkpoint(config.model.pretrained)
    base.update(file=os.path.basename(path), sha256=sha256_file(path))
    params = checkpoints.load_pretrained(path, model, rng=init_rng,
                                         interpolation=config.model.posemb_interpolation)
    bad = first_non_finite(params)
    if bad is not None:
      raise CheckpointError(f"checkpoint {path} holds NaN or infinite values (first in "
                            f"{bad}); re-download or re-export it")
  else:
    params = checkpoints.init_params(model, rng=init_rng)
  return params, checkpoints.init_model_state(model, rng=init_rng), base


def first_non_finite(params: dict) -> Optional[str]:
  """The '/'-joined path of the first parameter with a NaN or infinite value, or None."""
  for key, value in partition.flatten(params).items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      return key
  return None


def clear_run_files(workdir: str) -> None:
  """Removes a previous run's files (train.resume=False starts over)."""
  remove_tree(os.path.join(workdir, CHECKPOINT_DIR))
  for name in RUN_FILES:
    remove_file(os.path.join(workdir, name))


def prepare(config: ml_collections.ConfigDict, workdir: str, method: Method,
            fingerprint: str, log: Log) -> Prepared:
  """Data, model, weights, resume point, trainable mask and trainer."""
  # Data first: a missing dataset fails in seconds, before any download.
  task = build_task(config.data, image_size=config.model.image_size,
                    auto_value_range=model_info(config.model.name).value_range)
  num_classes = config.data.num_classes or task.num_classes
  if config.data.num_classes and config.data.num_classes != task.num_classes:
    raise ConfigError(f"config.data.num_classes={config.data.num_classes} but the data has "
                      f"{task.num_classes} classes")
  t = config.train
  steps_per_epoch = task.train.num_examples // t.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(f"config.train.batch_size={t.batch_size} is larger than the "
                      f"{task.train.num_examples} training examples; lower it")
  total_steps = t.epochs * steps_per_epoch
  if t.max_steps > 0:
    total_steps = min(total_steps, t.max_steps)

  model, _ = build_model(config, num_classes, method.extensions())
  params, model_state, base = load_weights(config, model)

  try:
    as_path(workdir).mkdir(parents=True, exist_ok=True)   # local or gs://
  except OSError as e:
    raise ConfigError(f"workdir {workdir} cannot be created ({e.strerror or e}); pass a "
                      "directory you can write to (--workdir=DIR)") from None
  if not t.resume:
    if distributed.is_primary():
      clear_run_files(workdir)
    distributed.barrier("clear_run_files")  # nobody reads the old checkpoints meanwhile
  ckpt = TrainCheckpointer(os.path.join(workdir, CHECKPOINT_DIR))
  try:
    return _resume_point(config, workdir, method, fingerprint, log, task=task,
                         num_classes=num_classes, model=model, params=params,
                         model_state=model_state, base=base, ckpt=ckpt,
                         steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  except BaseException:
    ckpt.close()
    raise


def _resume_point(config: ml_collections.ConfigDict, workdir: str, method: Method,
                  fingerprint: str, log: Log, *, task: Task, num_classes: int, model: Any,
                  params: dict, model_state: dict, base: dict, ckpt: TrainCheckpointer,
                  steps_per_epoch: int, total_steps: int) -> Prepared:
  """The checkpoint to resume from (if any), the method's mask and the trainer."""
  latest = ckpt.latest_step()
  meta: dict = {}
  if latest is not None:
    meta = ckpt.restore_meta(latest)
    if meta.get("fingerprint") != fingerprint:
      raise ConfigError(f"workdir {workdir} holds a run with a different config; use a new "
                        "--workdir or --config.train.resume=False")
    method.restore(meta.get("method_state", {}))

  ctx = MethodContext(config=config, model=model, params=params, task=task, workdir=workdir,
                      model_state=model_state)
  mask = method.trainable_mask(ctx)
  params = method.initial_params(ctx)
  model, spec = build_model(config, num_classes, method.trained_extensions())
  counts = (partition.count(params, mask),
            partition.count(params, mask, exclude=partition.is_head),
            partition.count(params, {k: True for k in partition.flatten(params)}))
  log(f"{config.method.name} on {task.name}: trainable parameters "
      f"{counts[0]:,} ({counts[1]:,} without the classifier) of {counts[2]:,}")
  trainer = Trainer(model, params, mask, config.optim, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, seed=config.seed,
                    model_state=model_state, accum_steps=config.train.accum_steps)
  state = trainer.initial_state()
  start = Start.FRESH
  if latest is not None:
    restored, _ = ckpt.restore(latest, state)
    state = jax.device_put(restored, trainer.replicated)
    start = Start.AFTER_LAST_STEP if latest >= total_steps else Start.RESUME
    log(f"resumed from step {latest} ({start.value})")
  return Prepared(config=config, workdir=workdir, task=task, method=method, model=model,
                  spec=spec, base=base, mask=mask, counts=counts, trainer=trainer,
                  ckpt=ckpt, start=start, state=state, meta=meta,
                  steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                  fingerprint=fingerprint)


# ----------------------------------------------------------------------------- train


class _Clock:
  """Run time split into training and side work (evaluation, checkpoints).

  Steps are dispatched asynchronously, so throughput is measured between
  synchronisation points only (metric fetches, evaluations, saves).
  """

  def __init__(self, elapsed_before: float, train_before: float):
    self.start = time.time()
    self.elapsed_before, self.train_before = elapsed_before, train_before
    self.side = 0.0
    self.sync_time, self.sync_steps, self.compiled = time.time(), 0, False

  def elapsed(self) -> float:
    return self.elapsed_before + time.time() - self.start

  def train_time(self) -> float:
    return self.train_before + time.time() - self.start - self.side

  def side_work(self, fn: Callable[[], Any]) -> Any:
    tic = time.time()
    out = fn()
    self.side += time.time() - tic
    self.sync_time, self.sync_steps = time.time(), 0
    return out

  def images_per_s(self, batch_size: int) -> Optional[float]:
    """Throughput since the last synchronisation (None for the compiling first one)."""
    now = time.time()
    rate = self.sync_steps * batch_size / max(now - self.sync_time, 1e-9)
    first = not self.compiled
    self.compiled, self.sync_time, self.sync_steps = True, now, 0
    return None if first else rate


def train(p: Prepared, log: Log) -> tuple[Any, list[dict], _Clock]:
  """Runs the steps from the resume point to the last one; returns state, history, clock."""
  t, task, trainer = p.config.train, p.task, p.trainer
  state = p.state
  history: list[dict] = list(p.meta.get("history", []))
  clock = _Clock(float(p.meta.get("elapsed_s", 0.0)), float(p.meta.get("train_time_s", 0.0)))
  step = first_step = int(state["step"])  # read now: the step donates the state's buffers
  writer = (MetricWriter(p.workdir, resume_step=step) if distributed.is_primary()
            else NullWriter())

  def evaluate(epoch: float, step: int) -> None:
    def run() -> None:
      record: dict[str, Any] = {"epoch": epoch, "step": step}
      record["test_top1"] = trainer.evaluate(state, task.test, t.eval_batch_size)["top1"]
      if task.val is not None:
        record["val_top1"] = trainer.evaluate(state, task.val, t.eval_batch_size)["top1"]
      history.append(record)
      writer.write(step, {f"eval/{k}": v for k, v in record.items() if k != "step"})
      with tqdm.external_write_mode(file=sys.stderr):   # the line, then the bar again
        log(f"step {step} (epoch {epoch:g}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k.endswith("_top1")))
    clock.side_work(run)

  def save(step: int) -> None:
    clock.side_work(lambda: p.ckpt.save(step, state, checkpoint_meta(p, history, clock)))
    writer.flush()   # metrics as durable as the checkpoint (one upload on gs://)

  bar = tqdm(total=p.total_steps, initial=step, desc="train",
             disable=not t.progress or not distributed.is_primary(), dynamic_ncols=True)
  rows = trainer.local_rows(t.batch_size)  # this process's share of every batch
  finite: list[tuple[int, Any]] = []
  while step < p.total_steps:
    epoch, skip = divmod(step, p.steps_per_epoch)
    for batch in epoch_batches(task.train, t.batch_size, seed=p.config.seed, epoch=epoch,
                               skip=skip, rows=rows):
      state, metrics = trainer.train_step(state, batch)
      step += 1
      clock.sync_steps += 1
      finite.append((step, metrics["finite"]))
      last = step == p.total_steps
      if step % t.log_every_steps == 0 or last:
        values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
        check_finite(finite)
        finite.clear()
        rate = clock.images_per_s(t.batch_size)
        if rate is not None:
          values["img_per_s"] = rate
        writer.write(step, {f"train/{k}": v for k, v in values.items()})
        bar.set_postfix(loss=f"{values['loss']:.4f}",
                        **({"img_s": f"{rate:.0f}"} if rate is not None else {}))
      bar.update(1)
      if step % p.steps_per_epoch == 0 and (step // p.steps_per_epoch) % t.eval_every_epochs == 0:
        evaluate(step // p.steps_per_epoch, step)
      if step % t.checkpoint_every_steps == 0 and not last:
        save(step)
      if last:
        break
  bar.close()
  jax.block_until_ready(state)
  if step > first_step:   # trained in this process: final evaluation + checkpoint
    if not history or history[-1]["step"] != step:
      evaluate(step / p.steps_per_epoch, step)
    save(step)
  writer.close()
  return state, history, clock


def check_finite(flags: list[tuple[int, Any]]) -> None:
  """Raises TrainingError naming the first step whose loss or gradient was not finite."""
  if not flags:
    return
  ok = np.asarray(jax.device_get(jnp.stack([f for _, f in flags])))
  if not ok.all():
    step = flags[int(np.argmin(ok))][0]
    raise TrainingError(f"training diverged: the loss or gradient norm is not finite at "
                        f"step {step}; lower config.optim.lr, set config.optim.clip_norm, or "
                        "check the pretrained weights")


def checkpoint_meta(p: Prepared, history: list[dict], clock: _Clock) -> dict:
  return {"fingerprint": p.fingerprint, "history": history,
          "elapsed_s": clock.elapsed(), "train_time_s": clock.train_time(),
          "method_state": p.method.resume_state()}


# ----------------------------------------------------------------------------- finalize


def finalize(p: Prepared, state: Any, history: list[dict], clock: _Clock,
             log: Log) -> dict[str, Any]:
  """Exports the adapter (and merged checkpoint), writes results.json last."""
  t = p.config.train
  p.ckpt.close()
  if not history:
    raise TrainingError(f"the checkpoint in {p.workdir} has no evaluation; rerun with "
                        "--config.train.resume=False")
  final_params = p.trainer.full_params(state)  # every process: may gather across them
  model_state = p.trainer.full_model_state(state)
  primary = distributed.is_primary()  # the others compute the same and write nothing
  if primary:
    n_stored = artifacts.export_adapter(
        p.workdir, final_params, p.mask, model_spec=p.spec, base=p.base,
        model_state=model_state, extra=adapter_info(p))
    if n_stored != p.counts[0]:
      raise RuntimeError(f"adapter stores {n_stored} scalars but {p.counts[0]} are trainable")
  if t.export_merged and primary:
    family = model_family(p.config.model.name)
    artifacts.export_merged(os.path.join(p.workdir, artifacts.merged_filename(family)),
                            p.model, final_params)
  steps = int(state["step"])
  results = summarize(p.config, p.task, history, p.method.info, base=p.base,
                      trainable=p.counts, wall=clock.elapsed(), train_time=clock.train_time(),
                      images=steps * t.batch_size, steps=steps)
  results["fingerprint"] = p.fingerprint
  if primary:
    write_json(os.path.join(p.workdir, RESULTS_FILE), results)
  log(f"{p.task.name} / {p.config.method.name}: test top-1 "
      f"{results['test_top1']:.4f} (best epoch {results['best_test_top1']:.4f})")
  return results


def preprocess_info(config: ml_collections.ConfigDict, task: Task) -> dict[str, Any]:
  """How images were prepared for the model (what `heat_jax.predict` repeats)."""
  return {"image_size": int(config.model.image_size),
          "value_range": task.info.get("value_range"),
          "resize_method": task.info.get("resize_method")}


def adapter_info(p: Prepared) -> dict[str, Any]:
  """The method, its options and state, the task and preprocessing, for the adapter files."""
  blocks = type(p.method).default_config()
  return {"method": p.config.method.name,
          "method_config": {b: p.config[b].to_dict() for b in blocks},
          "method_state": p.method.resume_state(),   # e.g. HEAT's head selection
          "task": {"name": p.task.name, "num_classes": p.task.num_classes,
                   "source": p.task.info.get("source")},
          "class_names": p.task.class_names(),
          "preprocess": preprocess_info(p.config, p.task)}


def summarize(config, task, history: list[dict], method_info: dict, *, base: dict,
              trainable: tuple[int, int, int], wall: float, train_time: float,
              images: int, steps: int) -> dict[str, Any]:
  """The results.json dict."""
  final = history[-1]
  best = max(history, key=lambda r: r["test_top1"])
  val_selected = None
  if task.val is not None and history and "val_top1" in history[0]:
    val_selected = max(history, key=lambda r: r["val_top1"])["test_top1"]
  return {
      "task": task.name, "method": config.method.name, "seed": int(config.seed),
      "model": config.model.name, "checkpoint": base,
      "test_top1": final["test_top1"], "best_test_top1": best["test_top1"],
      "best_epoch": best["epoch"], "val_top1": final.get("val_top1"),
      "val_selected_test_top1": val_selected,
      "num_test_examples": task.test.num_examples,
      "trainable_params": trainable[0], "trainable_params_no_head": trainable[1],
      "total_params": trainable[2], "steps": steps,
      "wall_time_s": round(wall, 3), "train_time_s": round(train_time, 3),
      "images_per_s": round(images / train_time, 2) if train_time > 0 else None,
      "value_range": task.info.get("value_range"),
      "resize_method": task.info.get("resize_method"),
      "preprocess": preprocess_info(config, task), "class_names": task.class_names(),
      "method_info": method_info, "history": history,
      "config": config.to_dict(),
  }


# ----------------------------------------------------------------------------- run


def _quiet(*_: Any) -> None:
  """The log of non-primary processes (process 0 reports for all)."""


def summary_line(results: dict[str, Any]) -> str:
  """The one line a finished run prints on stdout (run.py)."""
  return (f"{results['task']} / {results['method']}: test top-1 {results['test_top1']:.4f} "
          f"(best epoch {results['best_test_top1']:.4f}), trainable parameters "
          f"{results['trainable_params']:,}")


def run(config: ml_collections.ConfigDict, workdir: str, *,
        quiet: bool = False) -> dict[str, Any]:
  """Trains and evaluates one configuration; returns the results dict.

  Progress goes to absl.logging at INFO (`quiet`: at DEBUG, shown by --verbosity=1)
  and to a progress bar on stderr (`config.train.progress`); nothing to stdout.
  """
  logs.setup()
  log: Log = logging.debug if quiet else logging.info
  config = copy.deepcopy(config)  # nothing below may change the caller's config
  if not distributed.is_primary():
    log = _quiet
  method = validate(config)
  workdir_lib.check(workdir)
  fingerprint = config_fingerprint(config)
  done = finished_results(config, workdir, fingerprint)
  if done is not None:
    log(f"{workdir} already holds the finished run of this config: test top-1 "
        f"{done['test_top1']:.4f}")
    return done
  undo = workdir_lib.Undo(workdir)
  try:
    return _prepare_train_finalize(config, workdir, method, fingerprint, log)
  except BaseException:
    # Without a checkpoint nothing of this run can be resumed: leave no trace of it.
    if not workdir_lib.has_checkpoint(os.path.join(workdir, CHECKPOINT_DIR)):
      undo()
    raise


def _prepare_train_finalize(config: ml_collections.ConfigDict, workdir: str, method: Method,
                            fingerprint: str, log: Log) -> dict[str, Any]:
  p = prepare(config, workdir, method, fingerprint, log)
  try:
    if p.start is Start.AFTER_LAST_STEP:
      state, history = p.state, list(p.meta.get("history", []))
      clock = _Clock(float(p.meta.get("elapsed_s", 0.0)),
                     float(p.meta.get("train_time_s", 0.0)))
    else:
      state, history, clock = train(p, log)
    return finalize(p, state, history, clock, log)
  finally:
    p.ckpt.close()
