"""What a PETL method is: model extensions + what trains + its own config block.

A method is one module that defines a `Method` subclass registered with
`@register_method`. The engine asks it for
  * `default_config()`: the config blocks it owns (`config.<block>.*`), collected into
    the base config by `configs/common.py`;
  * `validate()`: cheap checks of its options, before data or weights are touched;
  * `fit(ctx)`: the method's data-dependent decision (HEAT: probe fit, TIS scoring,
    head selection, importance files), run once before the one model build that trains;
    a resumed run calls `restore(state)` instead. Default: nothing to decide;
  * `extensions()`: extension specs passed to the backbone (`heat_jax.models.extensions`:
    a delta on attention projections, branches around sub-blocks, prefix tokens, a
    head that reads every block), whose flax modules live in the method's file;
  * `trainable_mask(ctx)`: a flat mask over the loaded parameters (see
    `heat_jax.training.partition`); the engine chooses how to train it;
  * `trained_extensions()`: the extensions of the model that trains, after `fit`
    (default: `extensions()`; Heart-LoRA adds its per-head mask);
  `extensions()`, `trained_extensions()` and `trainable_mask()` are pure functions of
  the config and the fitted state;
  * `initial_params(ctx)`: the parameters training starts from, once the mask is known
    (default: the loaded ones; HEAT may start from its fitted linear-probe classifier);
  * `resume_state()` / `restore(state)`: what a resumed run must reuse (e.g. the HEAT
    selection); stored in the training checkpoint, never read from loose files.
Merging into plain weights is the extensions' `merge`. Methods never rename pretrained
parameters: extensions add their own subtrees, so pretrained checkpoints always load.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import flax.linen as nn
import ml_collections

from heat_jax.data.base import Task
from heat_jax.errors import ConfigError
from heat_jax.feed import Feed
from heat_jax.models.extensions import Extension
from heat_jax.training import partition

_METHODS: dict[str, type["Method"]] = {}


@dataclasses.dataclass
class MethodContext:
  """What a method may look at when deciding what to train.

  `model` is the module built for `extensions()` (the pretrained backbone without
  training-time state such as Heart-LoRA's head mask); `feed` the engine's mesh and batch
  helper, the same path training and evaluation use. `memo`: a dict a caller running
  several configs in one process (the study) passes to every run, where a method may
  keep a data-dependent result for a later run that would compute the same one
  (HEAT's scores: heat, heat_random and heat_bottom of one task share them).
  """

  config: ml_collections.ConfigDict
  model: nn.Module
  params: dict[str, Any]
  task: Optional[Task] = None
  workdir: Optional[str] = None
  model_state: dict[str, Any] = dataclasses.field(default_factory=dict)
  feed: Optional[Feed] = None
  memo: Optional[dict] = None


class Method:
  """Base class: trains the classifier head only (a linear probe)."""

  name: ClassVar[str] = "base"
  # The config field a generic `rank` shortcut sets (e.g. configs/vtab.py:dtd,rank=4).
  rank_field: ClassVar[Optional[str]] = None

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info: dict[str, Any] = {}

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    """Config blocks this method owns: {block name: defaults}."""
    return {}

  def validate(self) -> None:
    """Raises ConfigError on bad options; by default builds the extensions."""
    self.extensions()

  def fit(self, ctx: MethodContext) -> None:
    """The data-dependent decision (kept on the method, saved by `resume_state`)."""

  def extensions(self) -> tuple[Extension, ...]:
    return ()

  def trained_extensions(self) -> tuple[Extension, ...]:
    return self.extensions()

  @property
  def changes_model_after_fit(self) -> bool:
    """Whether `trained_extensions()` differ from `extensions()` (then the model that
    trains is built a second time, after `fit`; Heart-LoRA's head mask)."""
    return False

  @property
  def mergeable(self) -> bool:
    """Whether the trained model folds into a plain backbone checkpoint."""
    return all(e.mergeable for e in self.extensions())

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    return partition.mask_from_predicate(ctx.params, lambda k, _: partition.is_head(k))

  def with_head(self, params: dict, mask: partition.FlatMask) -> partition.FlatMask:
    """Adds the classifier head to a mask."""
    head = partition.mask_from_predicate(params, lambda k, _: partition.is_head(k))
    return partition.union(mask, head)

  def initial_params(self, ctx: MethodContext) -> dict[str, Any]:
    """The parameters training starts from (called after `trainable_mask`)."""
    return ctx.params

  def resume_state(self) -> dict[str, Any]:
    """JSON-able state a resumed run must reuse instead of recomputing."""
    return {}

  def restore(self, state: dict[str, Any]) -> None:
    """Takes back `resume_state()` from the run's checkpoint."""


def register_method(cls: type[Method]) -> type[Method]:
  """Class decorator: makes `cls` available as `config.method.name == cls.name`."""
  if cls.name in _METHODS:
    raise ValueError(f"method {cls.name!r} registered twice")
  _METHODS[cls.name] = cls
  return cls


def available_methods() -> list[str]:
  return sorted(_METHODS)


def method_config_blocks() -> dict[str, ml_collections.ConfigDict]:
  """Every registered method's config blocks (a block name belongs to one method)."""
  blocks: dict[str, ml_collections.ConfigDict] = {}
  owner: dict[str, str] = {}
  for name in available_methods():
    for block, value in _METHODS[name].default_config().items():
      if block in blocks:
        raise ValueError(f"config block {block!r} is claimed by methods {owner[block]!r} "
                         f"and {name!r}")
      blocks[block], owner[block] = value, name
  return blocks


def method_class(name: str) -> type[Method]:
  if name not in _METHODS:
    raise ConfigError(f"config.method.name={name!r} is not one of {available_methods()}")
  return _METHODS[name]


def get_method(config: ml_collections.ConfigDict) -> Method:
  return method_class(config.method.name)(config)
