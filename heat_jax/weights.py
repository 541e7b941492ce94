"""The weights a run starts from: the pretrained file or a seeded random init."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from heat_jax import checkpoints, provenance
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import sha256_file
from heat_jax.training import partition


def load_weights(config: ml_collections.ConfigDict, model: Any) -> tuple[dict, dict, dict]:
  """(params, model state, base info): the pretrained file or a seeded random init."""
  init_rng = jax.random.key(config.seed)  # artifacts.load_adapter rebuilds with this key
  base: dict[str, Any] = {"checkpoint": config.model.pretrained or None,
                          "interpolation": config.model.posemb_interpolation,
                          "init_seed": int(config.seed)}
  if config.model.pretrained:
    path = checkpoints.resolve_checkpoint(config.model.pretrained)
    base.update(checkpoints.provenance(config.model.pretrained))   # name, tag, hf_repo, ...
    base.update(file=os.path.basename(path), sha256=sha256_file(path),
                source=provenance.checkpoint_source(config.model.pretrained, path))
    params = checkpoints.load_pretrained(path, model, rng=init_rng, keep_head=False,
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
