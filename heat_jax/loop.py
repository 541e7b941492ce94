"""The train phase: the loop from the resume point to the last step, with the
evaluations `config.evals` asks for and the checkpoints (meta: history, stopwatch and
the method's fitted state)."""

from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from heat_jax import config_diff, distributed, evaluation, preemption
from heat_jax.clock import Clock
from heat_jax.errors import TrainingError
from heat_jax.training.metrics import MetricWriter, NullWriter

Log = Callable[[str], Any]


class Loop:
  """The training loop's running values: state, history, clock and metric writer."""

  def __init__(self, p: Any, log: Log):
    self.p, self.log, self.state = p, log, p.state
    self.history: list[dict] = list(p.meta.get("history", []))
    self.clock = Clock.from_meta(p.meta)
    self.step = int(self.state["step"])   # read now: the step donates the state's buffers
    self.writer = (MetricWriter(p.workdir, resume_step=self.step) if distributed.is_primary()
                   else NullWriter())

  def evaluate(self, final: bool = False) -> None:
    """The `config.evals` due at the end of this epoch; all of them after the last step."""
    self.clock.side_work(self._evaluate, final)

  def _evaluate(self, final: bool) -> None:
    p, t = self.p, self.p.config.train
    epoch, rest = divmod(self.step, p.steps_per_epoch)
    due = {name: e for name, e in p.config.evals.items()
           if eval_split(p.task, e.split) is not None}   # e.g. no held-out val split
    on_time = {n: e for n, e in due.items()
               if not rest and evaluation.due(e, epoch, t.eval_every_epochs)}
    if not final:
      due = on_time
    record: dict[str, Any] = {"epoch": epoch if on_time else self.step / p.steps_per_epoch,
                              "step": self.step}
    for name, e in due.items():
      measured = p.trainer.evaluate(self.state, eval_split(p.task, e.split), t.eval_batch_size)
      record.update({f"{name}_{m}": measured[m] for m in evaluation.metric_list(e)})
    if len(record) == 2:
      return
    self.history.append(record)
    self.writer.write(self.step, {f"eval/{k}": v for k, v in record.items() if k != "step"})
    with tqdm.external_write_mode(file=sys.stderr):   # the line, then the bar again
      self.log(f"step {self.step} (epoch {record['epoch']:g}): " + ", ".join(
          f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step")))

  def save(self) -> None:
    meta = checkpoint_meta(self.p, self.history, self.clock)
    with preemption.deferred():   # a signal now waits until the checkpoint is committed
      self.clock.side_work(self.p.ckpt.save, self.step, self.state, meta)
    self.writer.flush()   # metrics as durable as the checkpoint (one upload on gs://)

  def log_train(self, metrics: dict, finite: list[tuple[int, Any]], bar: Any) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
    check_finite(finite)
    finite.clear()
    rate = self.clock.images_per_s(self.p.config.train.batch_size)
    if rate is not None:
      values["img_per_s"] = rate
    self.writer.write(self.step, {f"train/{k}": v for k, v in values.items()})
    bar.set_postfix(loss=f"{values['loss']:.4f}",
                    **({"img_s": f"{rate:.0f}"} if rate is not None else {}))


def train(p: Any, log: Log) -> tuple[Any, list[dict], Clock]:
  """Runs the steps from the resume point to the last one; returns state, history, clock."""
  t, loop = p.config.train, Loop(p, log)
  first_step, per_epoch = loop.step, p.steps_per_epoch
  bar = tqdm(total=p.total_steps, initial=loop.step, desc="train",
             disable=not t.progress or not distributed.is_primary(), dynamic_ncols=True)
  finite: list[tuple[int, Any]] = []
  should_stop = preemption.watch()   # SIGTERM: save at a step all processes agree on
  while loop.step < p.total_steps:
    epoch, skip = divmod(loop.step, per_epoch)
    for batch in p.trainer.feed.epoch(p.task.train, t.batch_size, seed=p.config.seed,
                                      epoch=epoch, skip=skip):
      loop.state, metrics = p.trainer.train_step(loop.state, batch)
      loop.step += 1
      loop.clock.sync_steps += 1
      finite.append((loop.step, metrics["finite"]))
      last = loop.step == p.total_steps
      if loop.step % t.log_every_steps == 0 or last:
        loop.log_train(metrics, finite, bar)
      bar.update(1)
      if last or loop.step % per_epoch == 0:
        loop.evaluate(final=last)
      if loop.step % t.checkpoint_every_steps == 0 and not last:
        check_finite(finite)   # a diverged state is never saved
        loop.save()
      if not last and should_stop(loop.step):
        if loop.step % t.checkpoint_every_steps:
          check_finite(finite)
          loop.save()
        raise preemption.Preempted(loop.step, p.workdir)
      if last:
        break
  bar.close()
  jax.block_until_ready(loop.state)
  if loop.step > first_step:   # trained in this process: final evaluation + checkpoint
    if not loop.history or loop.history[-1]["step"] != loop.step:
      loop.evaluate(final=True)
    loop.save()
  loop.writer.close()
  return loop.state, loop.history, loop.clock


def eval_split(task: Any, name: str) -> Any:
  """The split an eval measures; `val` only where it is held out from training (never a
  "val" number on images the run trained on)."""
  return task.held_out_val() if name == "val" else getattr(task, name, None)


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


def checkpoint_meta(p: Any, history: list[dict], clock: Clock) -> dict:
  return {"fingerprint": p.fingerprint, "config": config_diff.as_json(p.config),
          "history": history, **clock.state(),
          "method_state": p.method.resume_state()}
