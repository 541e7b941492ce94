"""One way to run a model, shared by training, evaluation and importance scoring.

A model's variables are its parameters plus *model state*: the non-parameter
collections some extensions keep (e.g. BatchNorm's `batch_stats`). Training updates
the state (the collections are mutable in train mode); evaluation and scoring read it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax

Array = jax.Array
ModelState = dict[str, Any]


def apply_model(model: nn.Module, params: Any, model_state: Optional[Mapping[str, Any]],
                images: Array, *, train: bool = False, rng: Optional[Array] = None,
                head_gates: Optional[Array] = None) -> tuple[Array, ModelState]:
  """(logits, new model state); the state changes only in train mode.

  Args:
    params: the full parameter tree.
    model_state: non-parameter collections ({} or None for plain models).
    train: train mode (dropout, drop-path, batch statistics from the batch and updated).
    rng: key for the 'dropout' stream (train mode).
    head_gates: optional [layers, heads] gates (see the models).
  """
  state = dict(model_state or {})
  variables = {"params": params, **state}
  rngs = {"dropout": rng} if rng is not None else None
  kwargs = {} if head_gates is None else {"head_gates": head_gates}
  if train and state:
    logits, updates = model.apply(variables, images, train=True, rngs=rngs,
                                  mutable=list(state), **kwargs)
    return logits, {**state, **updates}
  return model.apply(variables, images, train=train, rngs=rngs, **kwargs), state


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, ModelState]:
  """(params, model state) of a variables dict."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}
