"""One run: data + model + method -> train -> evaluate -> results and artifacts.

`run(config, workdir)` is what `run.py` and the sweep call. Everything it writes
lands in `workdir` atomically; a restart of the same command resumes from the latest
checkpoint (unless `config.train.resume=False`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from heat_jax import artifacts, checkpoints, model_spec
from heat_jax.data import build_task
from heat_jax.errors import ConfigError
from heat_jax.io_utils import sha256_file, write_json
from heat_jax.methods import MethodContext, get_method
from heat_jax.models import create_model, model_family
from heat_jax.training import partition
from heat_jax.training.checkpointing import TrainCheckpointer
from heat_jax.training.metrics import MetricWriter
from heat_jax.training.trainer import Trainer, epoch_batches

_RESUME_NEUTRAL = ("train.resume", "train.progress", "train.export_merged")


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


def build_model(config: ml_collections.ConfigDict, num_classes: int, overrides: dict):
  """The linen module for `config.model` plus a method's overrides."""
  fields = {"image_size": config.model.image_size,
            "drop_path_rate": config.model.drop_path_rate}
  if model_family(config.model.name) == "vit":
    fields["classifier"] = config.model.classifier
  if config.train.bf16:
    fields["dtype"] = jnp.bfloat16
  spec_fields = {**fields, **overrides}
  spec_fields.pop("dtype", None)
  model = create_model(config.model.name, num_classes, **fields, **overrides)
  return model, model_spec.spec_of(config.model.name, num_classes, spec_fields)


def validate(config: ml_collections.ConfigDict) -> None:
  """Cheap checks that fail before any data or weights are touched."""
  t = config.train
  if t.batch_size < 1 or t.eval_batch_size < 1:
    raise ConfigError("config.train.batch_size and eval_batch_size must be >= 1")
  n_dev = jax.local_device_count()
  if t.batch_size % n_dev or t.eval_batch_size % n_dev:
    raise ConfigError(f"batch sizes ({t.batch_size}, {t.eval_batch_size}) must be "
                      f"divisible by the {n_dev} local devices")
  if t.epochs < 1:
    raise ConfigError(f"config.train.epochs must be >= 1, got {t.epochs}")
  if config.optim.lr <= 0:
    raise ConfigError(f"config.optim.lr must be > 0, got {config.optim.lr}")
  if config.train.export_merged and not get_method(config).mergeable:
    raise ConfigError(f"config.train.export_merged: method {config.method.name} adds "
                      "modules that cannot be folded into a plain checkpoint; set it False")


def run(config: ml_collections.ConfigDict, workdir: str, *,
        log: Any = print) -> dict[str, Any]:
  """Trains and evaluates one configuration; returns the results dict."""
  start_time = time.time()
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  method = get_method(config)
  overrides = method.model_overrides()

  # Data first: a missing dataset fails in seconds, before any download.
  family = model_family(config.model.name)
  task = build_task(config.data, model_family=family, image_size=config.model.image_size)
  num_classes = config.data.num_classes or task.num_classes
  if config.data.num_classes and config.data.num_classes != task.num_classes:
    raise ConfigError(f"config.data.num_classes={config.data.num_classes} but the data has "
                      f"{task.num_classes} classes")
  model, spec = build_model(config, num_classes, overrides)

  init_rng = jax.random.key(config.seed)  # artifacts.load_adapter rebuilds with this key
  base: dict[str, Any] = {"checkpoint": config.model.pretrained or None,
                          "interpolation": config.model.posemb_interpolation,
                          "init_seed": int(config.seed)}
  if config.model.pretrained:
    path = checkpoints.resolve_checkpoint(config.model.pretrained)
    base.update(file=os.path.basename(path), sha256=sha256_file(path))
    params = checkpoints.load_pretrained(path, model, rng=init_rng,
                                         interpolation=config.model.posemb_interpolation)
  else:
    params = checkpoints.init_params(model, rng=init_rng)

  ctx = MethodContext(config=config, model=model, params=params, task=task, workdir=workdir)
  mask = method.trainable_mask(ctx)
  n_train = partition.count(params, mask)
  n_train_body = partition.count(params, mask, exclude=partition.is_head)
  n_total = partition.count(params, {k: True for k in partition.flatten(params)})
  log(f"[heat_jax] {config.method.name} on {task.name}: trainable parameters "
      f"{n_train:,} ({n_train_body:,} without the classifier) of {n_total:,}")

  t = config.train
  steps_per_epoch = task.train.num_examples // t.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(f"config.train.batch_size={t.batch_size} is larger than the "
                      f"{task.train.num_examples} training examples; lower it")
  total_steps = t.epochs * steps_per_epoch
  if t.max_steps > 0:
    total_steps = min(total_steps, t.max_steps)
  trainer = Trainer(model, params, mask, config.optim, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, seed=config.seed)
  state = trainer.initial_state()

  fingerprint = config_fingerprint(config)
  ckpt = TrainCheckpointer(os.path.join(workdir, "checkpoints"))
  history: list[dict] = []
  elapsed_before = 0.0
  train_time_before = 0.0
  latest = ckpt.latest_step()
  if latest is not None and t.resume:
    restored, meta = ckpt.restore(latest, state)
    if meta.get("fingerprint") != fingerprint:
      raise ConfigError(f"workdir {workdir} holds a run with a different config; use a new "
                        "--workdir or --config.train.resume=False")
    state = jax.device_put(restored, trainer.replicated)
    history = list(meta.get("history", []))
    elapsed_before = float(meta.get("elapsed_s", 0.0))
    train_time_before = float(meta.get("train_time_s", 0.0))
    log(f"[heat_jax] resumed from step {latest}")
  writer = MetricWriter(workdir, resume_step=int(state["step"]))

  # Steps are dispatched asynchronously, so training time is measured as loop time
  # minus the (synchronising) evaluations and checkpoint saves.
  loop_start = time.time()
  side_time = 0.0

  def train_time() -> float:
    return time.time() - loop_start - side_time

  def checkpoint_meta() -> dict:
    return {"fingerprint": fingerprint, "history": history,
            "elapsed_s": elapsed_before + time.time() - start_time,
            "train_time_s": train_time_before + train_time()}

  def save(step: int) -> None:
    nonlocal side_time
    tic = time.time()
    ckpt.save(step, state, checkpoint_meta())
    side_time += time.time() - tic

  def evaluate_epoch(epoch: int, step: int) -> None:
    nonlocal side_time
    tic = time.time()
    record: dict[str, Any] = {"epoch": epoch, "step": step}
    record["test_top1"] = trainer.evaluate(state, task.test, t.eval_batch_size)["top1"]
    if task.val is not None:
      record["val_top1"] = trainer.evaluate(state, task.val, t.eval_batch_size)["top1"]
    history.append(record)
    writer.write(step, {f"eval/{k}": v for k, v in record.items() if k != "step"})
    side_time += time.time() - tic

  step = int(state["step"])
  bar = tqdm(total=total_steps, initial=step, desc="train", disable=not t.progress,
             dynamic_ncols=True)
  last_log = time.time()
  while step < total_steps:
    epoch, skip = divmod(step, steps_per_epoch)
    for batch in epoch_batches(task.train, t.batch_size, seed=config.seed, epoch=epoch,
                               skip=skip):
      state, metrics = trainer.train_step(state, batch)
      step += 1
      if step % t.log_every_steps == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.time()
        metrics["img_per_s"] = t.batch_size * t.log_every_steps / max(now - last_log, 1e-9)
        last_log = now
        writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['img_per_s']:.0f}")
      bar.update(1)
      epoch_done = step % steps_per_epoch == 0
      if epoch_done and ((step // steps_per_epoch) % t.eval_every_epochs == 0):
        evaluate_epoch(step // steps_per_epoch, step)
      if step % t.checkpoint_every_steps == 0 and step < total_steps:
        save(step)
      if step >= total_steps:
        break
  bar.close()
  jax.block_until_ready(state)
  if not history or history[-1]["step"] != step:
    evaluate_epoch(step / steps_per_epoch, step)
  train_seconds = train_time()
  save(step)
  ckpt.close()
  writer.close()

  final_params = trainer.full_params(state)
  n_stored = artifacts.export_adapter(workdir, final_params, mask, model_spec=spec, base=base,
                                      extra={"method": config.method.name})
  if n_stored != n_train:
    raise RuntimeError(f"adapter stores {n_stored} scalars but {n_train} are trainable")
  if t.export_merged:
    scale = (config.lora.alpha / config.lora.rank) if "lora" in overrides else None
    artifacts.export_merged(os.path.join(workdir, "merged.npz"), final_params,
                            lora_scale=scale)

  results = summarize(config, task, history, method.info, base=base,
                      trainable=(n_train, n_train_body, n_total),
                      wall=elapsed_before + time.time() - start_time,
                      train_time=train_time_before + train_seconds, images=step * t.batch_size,
                      steps=step)
  write_json(os.path.join(workdir, "results.json"), results)
  log(f"[heat_jax] {task.name} / {config.method.name}: test top-1 "
      f"{results['test_top1']:.4f} (best epoch {results['best_test_top1']:.4f})")
  return results


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
      "method_info": method_info, "history": history,
      "config": config.to_dict(),
  }
