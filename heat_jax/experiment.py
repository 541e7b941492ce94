"""One run: the driver from a config to results and artifacts.

`run(config, workdir)` is what `run.py` and the sweep call. Its phases, each a function:

  validate   cheap checks of the config (each next to what it configures); nothing is
             read or written
  finished?  results.json of this very config exists: report it and stop
  data       the task (train / val / test splits) and the step counts
  model      the one model build (the method's extensions) and its weights
  decide     the method's data-dependent step: `method.fit` (HEAT: probe, TIS, selection)
             or, on resume, `method.restore` from the checkpoint
  train      the trainer (mask, loss of `config.task_kind`), the loop to the last step
  evaluate   `config.evals`, at their epochs and after the last step
  write      final checkpoint, adapter / merged exports, results.json (heat_jax.results)

Resume precedence (the run's own checkpoint is the only state ever reused):
  * FINISHED: results.json with this config's fingerprint -> returned as is;
  * AFTER_LAST_STEP: a checkpoint at the last step (killed before results.json) ->
    only the write phase runs;
  * RESUME: a checkpoint before the last step -> training continues from it, with the
    method's fitted state (e.g. the HEAT selection) taken from the checkpoint;
  * FRESH: nothing usable (or `train.resume=False`, which clears the old run first).
A checkpoint of another config is an error, never silently reused.

Multi-process runs (`heat_jax.distributed`): every process runs every phase and
computes the same values; each loads only its rows of a batch (`heat_jax.feed`); all of
them save and restore the checkpoints; only the primary process writes the other files.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import math
import os
from typing import Any, Callable, Optional

import jax
import ml_collections
from absl import logging

from heat_jax import artifacts, checkpoints, config_diff, distributed, evaluation, logs
from heat_jax import preemption
from heat_jax import workdir as workdir_lib
from heat_jax.clock import Clock
from heat_jax.data import build_task, check_config as check_data_config
from heat_jax.data.base import Task
from heat_jax.errors import CheckpointError, ConfigError
from heat_jax.feed import Feed
from heat_jax.finalize import finalize
from heat_jax.loop import train
from heat_jax.io_utils import as_path, read_json, remove_file, remove_tree
from heat_jax.methods import Method, MethodContext, get_method
from heat_jax.models import model_family
from heat_jax.models.build import _is_int, build_model, check_model_config  # noqa: F401
from heat_jax.results import RESULTS_FILE, summary_line  # noqa: F401  (cli prints it)
from heat_jax.tasks import TaskKind, get_task_kind
from heat_jax.training import optimizer, partition, trainer as trainer_lib
from heat_jax.training.checkpointing import TrainCheckpointer
from heat_jax.training.trainer import Trainer
from heat_jax.weights import first_non_finite, load_weights  # noqa: F401

Log = Callable[[str], Any]
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


# ----------------------------------------------------------------------------- validate


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
  """Hash of the config fields that define the run (resume must match it).

  Fields added after runs were first fingerprinted (task_kind, evals) are left out at
  their defaults, so runs made before them still resume.
  """
  flat = _flat(config.to_dict())
  for k in _RESUME_NEUTRAL:
    flat.pop(k, None)
  if flat.get("task_kind") == "classification":
    flat.pop("task_kind")
  if config.get("evals") is not None and (config.evals.to_dict()
                                          == evaluation.default_evals().to_dict()):
    flat = {k: v for k, v in flat.items() if not k.startswith("evals.")}
  return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


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
  trainer_lib.check_config(config.train)
  optimizer.check_config(config.optim)
  kind = get_task_kind(config.task_kind, config)
  kind.validate()
  evaluation.check_evals(config.evals, kind.metric_names)
  check_data_config(config.data, auto_value_range=checkpoints.auto_value_range(
      config.model.name, config.model.pretrained))
  method = get_method(config)
  method.validate()
  if config.train.export_merged and not method.mergeable:
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
    found = read_json(path)
  except (OSError, ValueError):
    return None  # unreadable: the run is redone and the file rewritten
  if found.get("fingerprint") != fingerprint:
    raise config_diff.refusal(workdir, found.get("config"), config, finished=True,
                              ignore=_RESUME_NEUTRAL)
  artifacts_needed = ["adapter.npz", "adapter.json"]
  if config.train.export_merged:
    artifacts_needed.append(artifacts.merged_filename(model_family(config.model.name)))
  if not all(as_path(os.path.join(workdir, name)).exists() for name in artifacts_needed):
    return None   # e.g. export_merged asked for later: finalize again from the checkpoint
  return found


# ----------------------------------------------------------------------------- data, model


@dataclasses.dataclass
class Prepared:
  """Everything the train and write phases need."""

  config: ml_collections.ConfigDict
  workdir: str
  task: Task
  kind: TaskKind
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


def load_data(config: ml_collections.ConfigDict, kind: TaskKind) -> tuple[Task, int, int, int]:
  """(task, number of outputs, steps per epoch, total steps)."""
  task = build_task(config.data, image_size=config.model.image_size,
                    auto_value_range=checkpoints.auto_value_range(
                        config.model.name, config.model.pretrained))
  num_outputs = config.data.num_classes or kind.num_outputs(task)
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
  return task, num_outputs, steps_per_epoch, total_steps


def clear_run_files(workdir: str) -> None:
  """Removes a previous run's files (train.resume=False starts over)."""
  remove_tree(os.path.join(workdir, CHECKPOINT_DIR))
  for name in RUN_FILES:
    remove_file(os.path.join(workdir, name))


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str,
                     fingerprint: str) -> tuple[TrainCheckpointer, Optional[int], dict]:
  """The workdir's checkpointer, its latest step and that checkpoint's meta."""
  try:
    as_path(workdir).mkdir(parents=True, exist_ok=True)   # local or gs://
  except OSError as e:
    raise ConfigError(f"workdir {workdir} cannot be created ({e.strerror or e}); pass a "
                      "directory you can write to (--workdir=DIR)") from None
  if not config.train.resume:
    if distributed.is_primary():
      clear_run_files(workdir)
    distributed.barrier("clear_run_files")  # nobody reads the old checkpoints meanwhile
  ckpt = TrainCheckpointer(os.path.join(workdir, CHECKPOINT_DIR))
  latest, meta = ckpt.latest_step(), {}
  if latest is not None:
    meta = ckpt.restore_meta(latest)
    if meta.get("fingerprint") != fingerprint:
      ckpt.close()
      raise config_diff.refusal(workdir, meta.get("config"), config, ignore=_RESUME_NEUTRAL)
    if "method_state" not in meta:
      ckpt.close()
      raise CheckpointError(f"the checkpoint in {workdir} has no method state (written by "
                            "an older heat_jax); rerun with --config.train.resume=False")
  return ckpt, latest, meta


def prepare(config: ml_collections.ConfigDict, workdir: str, method: Method,
            fingerprint: str, log: Log, memo: Optional[dict] = None) -> Prepared:
  """Data, the model, the method's decision, the trainer and the resume point
  (`memo`: see `MethodContext`)."""
  kind = get_task_kind(config.task_kind, config)
  # Data first: a missing dataset fails in seconds, before any download.
  task, num_outputs, steps_per_epoch, total_steps = load_data(config, kind)
  model, spec = build_model(config, num_outputs, method.extensions())
  params, model_state, base = load_weights(config, model)
  ckpt, latest, meta = open_checkpoints(config, workdir, fingerprint)
  try:
    feed = Feed.create()
    ctx = MethodContext(config=config, model=model, params=params, task=task,
                        workdir=workdir, model_state=model_state, feed=feed, memo=memo)
    if latest is not None:
      method.restore(meta["method_state"])
    method.fit(ctx)   # a restored state is only checked against the model
    mask = method.trainable_mask(ctx)
    params = method.initial_params(ctx)
    if method.changes_model_after_fit:
      model, spec = build_model(config, num_outputs, method.trained_extensions())
    counts = (partition.count(params, mask),
              partition.count(params, mask, exclude=partition.is_head),
              partition.count(params, {k: True for k in partition.flatten(params)}))
    log(f"{config.method.name} on {task.name}: trainable parameters "
        f"{counts[0]:,} ({counts[1]:,} without the classifier) of {counts[2]:,}")
    trainer = Trainer(model, params, mask, config.optim, total_steps=total_steps,
                      steps_per_epoch=steps_per_epoch, seed=config.seed,
                      model_state=model_state, accum_steps=config.train.accum_steps,
                      task_kind=kind, feed=feed)
    state, start = trainer.initial_state(), Start.FRESH
    if latest is not None:
      restored, _ = ckpt.restore(latest, state)
      state = jax.device_put(restored, trainer.replicated)
      start = Start.AFTER_LAST_STEP if latest >= total_steps else Start.RESUME
      log(f"resumed from step {latest} ({start.value})")
  except BaseException:
    ckpt.close()
    raise
  return Prepared(config=config, workdir=workdir, task=task, kind=kind, method=method,
                  model=model, spec=spec, base=base, mask=mask, counts=counts,
                  trainer=trainer, ckpt=ckpt, start=start, state=state, meta=meta,
                  steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                  fingerprint=fingerprint)


# ----------------------------------------------------------------------------- run


def _quiet(*_: Any) -> None:
  """The log of non-primary processes (process 0 reports for all)."""


def run(config: ml_collections.ConfigDict, workdir: str, *,
        quiet: bool = False, memo: Optional[dict] = None) -> dict[str, Any]:
  """Trains and evaluates one configuration; returns the results dict.

  Progress goes to absl.logging at INFO (`quiet`: at DEBUG, shown by --verbosity=1)
  and to a progress bar on stderr (`config.train.progress`); nothing to stdout.
  `memo`: one dict passed to several runs of one process lets a method reuse what an
  earlier run computed the same way (`MethodContext.memo`).
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
    log(f"{workdir} already holds the finished run of this config: {summary_line(done)}")
    return done
  undo = workdir_lib.Undo(workdir)
  with workdir_lib.lock(workdir):   # the only writer; a refused second run touches nothing
    try:
      with preemption.Guard():      # SIGTERM: checkpoint and exit (heat_jax.preemption)
        return _prepare_train_finalize(config, workdir, method, fingerprint, log, memo)
    except BaseException:
      # Without a checkpoint nothing of this run can be resumed: leave no trace of it.
      if not workdir_lib.has_checkpoint(os.path.join(workdir, CHECKPOINT_DIR)):
        undo()
      raise


def _prepare_train_finalize(config: ml_collections.ConfigDict, workdir: str, method: Method,
                            fingerprint: str, log: Log,
                            memo: Optional[dict] = None) -> dict[str, Any]:
  p = prepare(config, workdir, method, fingerprint, log, memo)
  try:
    if p.start is Start.AFTER_LAST_STEP:
      state, history, clock = p.state, list(p.meta.get("history", [])), Clock.from_meta(p.meta)
    else:
      state, history, clock = train(p, log)
    return finalize(p, state, history, clock, log)
  finally:
    p.ckpt.close()
