"""The write phase: final adapter (and merged checkpoint) exports, results.json last."""

from __future__ import annotations

import os
from typing import Any, Callable

from heat_jax import artifacts, distributed, results
from heat_jax.clock import Clock
from heat_jax.errors import TrainingError
from heat_jax.io_utils import write_json
from heat_jax.models import model_family

Log = Callable[[str], Any]


def finalize(p: Any, state: Any, history: list[dict], clock: Clock,
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
        model_state=model_state, extra=results.adapter_info(p.config, p.task, p.method))
    if n_stored != p.counts[0]:
      raise RuntimeError(f"adapter stores {n_stored} scalars but {p.counts[0]} are trainable")
  if t.export_merged and primary:
    family = model_family(p.config.model.name)
    artifacts.export_merged(os.path.join(p.workdir, artifacts.merged_filename(family)),
                            p.model, final_params)
  steps = int(state["step"])
  out = results.summarize(p.config, p.task, history, p.method.info, base=p.base,
                          trainable=p.counts, wall=clock.elapsed(),
                          train_time=clock.train_time(), images=steps * t.batch_size,
                          steps=steps)
  out["fingerprint"] = p.fingerprint
  if primary:
    write_json(os.path.join(p.workdir, results.RESULTS_FILE), out)
  log(results.summary_line(out))
  return out
