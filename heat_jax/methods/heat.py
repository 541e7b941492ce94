"""HEAT: score every head with TIS on the training data, train only the kept heads.

Heads are scored through a classifier (`importance.classifier`): by default a linear
probe fitted on the frozen backbone's features of the training data
(`heat_jax.importance.probe`); or a seeded random head; or the parameters' own head.
With `importance.keep_probe` training starts from that probe (LP-FT style; with the
random classifier a probe is fitted for the purpose; `model` keeps the model's head).

`heat.tune = 'head_weights'`: the selected heads' q/k/v kernel and bias slices and
their out-kernel slices train (element masks inside the optimizer), plus the head.
`heat.tune = 'lora'` (Heart-LoRA): LoRA on q and v (`lora.*`) whose update is masked
per head in the forward pass (a fixed 0/1 factor), so unselected heads get no update
whatever the factors hold; only the LoRA `b` columns of selected heads (and `a` of
layers with any selected head) count as trainable. See README.md (HEAT options).

The selection is HEAT's `fit` step, computed once per run before the model that trains
is built; a resumed run takes it back from its training checkpoint (`resume_state` /
`restore`), never from loose workdir files.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Optional

import jax
import ml_collections
import numpy as np

from heat_jax.tasks import get_task_kind
from heat_jax import distributed
from heat_jax.errors import CheckpointError, ConfigError
from heat_jax.feed import Feed
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.methods.lora import lora_spec
from heat_jax.models import head_layout, named_head_layout
from heat_jax.models.extensions import Extension
from heat_jax.models.attention_paths import attention_paths, get_subtree
from heat_jax.training import partition

TUNES = ("head_weights", "lora")
CLASSIFIERS = ("probe", "random", "model")
# Training from the zero classifier, not the probe: on the demo study (1 seed, 4 tasks)
# starting from the probe lost on 4 of 4 tasks (mean -2.7 points); see the README.
KEEP_PROBE_DEFAULT = False


def _per_layer(params: dict, selected: np.ndarray):
  """(path prefix, attention subtree, bool [heads]) for every attention layer."""
  for row, path in enumerate(attention_paths(params)):
    node = get_subtree(params, path)
    h = node["query"]["kernel"].shape[1]
    yield "/".join(path), node, np.asarray(selected[row, :h], bool)


def head_weight_mask(params: dict, selected: np.ndarray) -> partition.FlatMask:
  """Element masks selecting the q/k/v/out slices of the selected heads.

  Swin's relative-position bias table has one column per head; a selected head's
  column trains with it. Bias masks only where the model has q/k/v biases.
  """
  mask = {k: False for k in partition.flatten(params)}
  for prefix, node, sel in _per_layer(params, selected):
    for proj in ("query", "key", "value"):
      mask[f"{prefix}/{proj}/kernel"] = sel[None, :, None]
      if "bias" in node[proj]:
        mask[f"{prefix}/{proj}/bias"] = sel[:, None]
    mask[f"{prefix}/out/kernel"] = sel[:, None, None]
    if "relative_position_bias_table" in node:
      mask[f"{prefix}/relative_position_bias_table"] = sel[None, :]
  return mask


def head_lora_mask(params: dict, selected: np.ndarray) -> partition.FlatMask:
  """Heart-LoRA masks: `b` columns of selected heads; `a` where any head is selected."""
  mask = {k: False for k in partition.flatten(params)}
  for prefix, node, sel in _per_layer(params, selected):
    for name in node:
      if name.startswith("lora_"):
        mask[f"{prefix}/{name}/a"] = bool(sel.any())
        mask[f"{prefix}/{name}/b"] = sel[None, :, None]
  return mask


def random_classifier(params: dict, seed: int) -> dict:
  """`params` with a seeded LeCun-normal classifier kernel and a zero bias.

  The `random` scoring classifier (the PyTorch / timm convention for a fresh head). TIS
  is first order in the loss and every gradient into the backbone passes through the
  classifier: with the vit_jax zero-initialised head all scores are exactly 0, with this
  one they measure the sensitivity to a random readout (`probe` scores through the task).
  """
  head = params.get("head")
  if head is None or "kernel" not in head:
    raise ConfigError("importance.classifier='random' needs a 'head' Dense classifier")
  kernel = np.asarray(head["kernel"])
  rng = np.random.default_rng([seed, 0x7115])
  fresh = rng.standard_normal(kernel.shape) / np.sqrt(max(kernel.shape[0], 1))
  new = {"kernel": fresh.astype(kernel.dtype)}
  if "bias" in head:
    new["bias"] = np.zeros_like(np.asarray(head["bias"]))
  return {**params, "head": {**head, **new}}


# heat.* fields that choose heads from the scores; every other field may change them.
_SELECTION_FIELDS = ("budget", "select", "select_seed", "scope", "deactivate")


def scores_key(config: ml_collections.ConfigDict) -> str:
  """What HEAT's scores depend on: the whole config except how heads are picked from
  them (`heat.budget`, `select`, ...), so runs that differ only there share scores."""
  c = config.to_dict()
  c["heat"] = {k: v for k, v in c.get("heat", {}).items() if k not in _SELECTION_FIELDS}
  return json.dumps(c, sort_keys=True, default=str)


def scoring_params(model: Any, params: dict, train_batches: Iterable[dict], *,
                   classifier: str = "probe", seed: int = 0, l2: float = 1e-3,
                   model_state: Optional[dict] = None) -> tuple[dict, Optional[Any]]:
  """(parameters TIS runs with, the fitted probe or None) for `importance.classifier`.

  probe:  the classifier is a linear probe fitted on the frozen backbone's features of
          `train_batches` (one pass; `heat_jax.importance.probe`);
  random: a seeded LeCun-normal classifier (`random_classifier`);
  model:  the parameters as they are (ConfigError if their classifier is all zeros:
          every score would be 0).
  """
  from heat_jax.importance import probe as probe_lib
  if classifier not in CLASSIFIERS:
    raise ConfigError(f"importance.classifier={classifier!r} is not one of {CLASSIFIERS}")
  if classifier == "random":
    return random_classifier(params, seed), None
  if classifier == "model":
    head = params.get("head", {})
    if "kernel" in head and not np.any(np.asarray(head["kernel"])):
      raise ConfigError("importance.classifier='model' but the model's classifier is all "
                        "zeros (a fresh vit_jax head), so every score would be 0; use "
                        "importance.classifier=probe")
    return params, None
  probe = probe_lib.fit_head_probe(model, params, train_batches, l2=l2,
                                   model_state=model_state)
  return probe_lib.with_probe(params, probe), probe


@register_method
class Heat(Method):
  name = "heat"
  rank_field = "lora.rank"   # Heart-LoRA (heat.tune=lora)

  def __init__(self, config):
    super().__init__(config)
    self.selected: Optional[np.ndarray] = None
    self.probe = None   # heat_jax.importance.probe.Probe fitted by this run

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    imp = ml_collections.ConfigDict()
    imp.strategy = "head"               # qkv | out | head | gate
    imp.num_batches = 0                 # 0 = every training batch of one epoch
    imp.normalize = "none"              # none | layer
    imp.aggregate = "batch"             # batch (|batch-mean grad x theta|, batch-size
    #                                     dependent) | example (mean of per-example abs)
    imp.batch_size = 32
    imp.classifier = "probe"            # probe | random | model: what TIS scores through
    imp.keep_probe = KEEP_PROBE_DEFAULT # probe | random: training starts from a linear probe
    imp.probe_l2 = 1e-3                 # probe: l2 / 2 * ||kernel||^2 on the mean CE
    heat = ml_collections.ConfigDict()
    heat.scope = "global"               # global | layer
    # Heads kept: an int count (>= 1) or a float fraction in (0, 1.0] (1.0 = all heads).
    # Untyped fields, so `--config.heat.budget=1` stays the int 1 (one head), `=1.0` a float.
    heat.budget = ml_collections.FieldReference(0.5, field_type=object)
    # Paper form: heads NOT adapted, count or fraction (-1 = off).
    heat.deactivate = ml_collections.FieldReference(-1.0, field_type=object)
    heat.select = "top"                 # top | bottom | random
    heat.tune = "head_weights"          # head_weights | lora (Heart-LoRA, uses lora.*)
    heat.select_seed = 0
    return {"importance": imp, "heat": heat}

  def validate(self) -> None:
    if self.config.heat.tune not in TUNES:
      raise ConfigError(f"config.heat.tune={self.config.heat.tune!r} is not one of {TUNES}")
    n_dev = jax.device_count()  # scoring batches are sharded like training batches
    if self.config.importance.batch_size % n_dev:
      raise ConfigError(f"config.importance.batch_size={self.config.importance.batch_size} "
                        f"must be divisible by the {n_dev} devices")
    imp = self.config.importance
    if imp.classifier not in CLASSIFIERS:
      raise ConfigError(f"config.importance.classifier={imp.classifier!r} is not one of "
                        f"{CLASSIFIERS}")
    if not imp.probe_l2 >= 0:
      raise ConfigError(f"config.importance.probe_l2 must be >= 0, got {imp.probe_l2}")
    super().validate()
    self._validate_selection()

  def _validate_selection(self) -> None:
    """Scoring and budget options against the model's head layout (no weights, no data).

    A dry run of the selection on constant scores raises every budget, deactivate,
    scope and select error that the real selection would raise after scoring.
    """
    from heat_jax import importance
    imp, h, m = self.config.importance, self.config.heat, self.config.model
    for block, name, valid in (("importance", "strategy", importance.STRATEGIES),
                               ("importance", "normalize", importance.NORMALIZE),
                               ("importance", "aggregate", importance.AGGREGATES),
                               ("heat", "scope", importance.SCOPES),
                               ("heat", "select", importance.SELECTS)):
      if self.config[block][name] not in valid:
        raise ConfigError(f"config.{block}.{name}={self.config[block][name]!r} is not one "
                          f"of {', '.join(valid)}")
    if imp.batch_size < 1:
      raise ConfigError(f"config.importance.batch_size must be >= 1, got {imp.batch_size}")
    if imp.num_batches < 0:
      raise ConfigError(f"config.importance.num_batches must be >= 0 (0 = all), got "
                        f"{imp.num_batches}")
    if h.select_seed < 0:
      raise ConfigError(f"config.heat.select_seed must be >= 0, got {h.select_seed}")
    layout = named_head_layout(m.name, image_size=m.image_size)
    try:
      importance.select_heads(np.ones(layout.shape), h.budget, scope=h.scope,
                              select=h.select, seed=h.select_seed, valid=layout.valid,
                              deactivate=h.deactivate)
    except ConfigError as e:
      per_layer = "/".join(map(str, sorted(set(layout.heads_per_layer))))
      raise ConfigError(f"config.heat: {e.one_line()} ({m.name}: {layout.num_layers} "
                        f"layers of {per_layer} heads); change config.heat.budget, "
                        "deactivate or scope") from None

  def extensions(self) -> tuple[Extension, ...]:
    if self.config.heat.tune == "lora":
      return (lora_spec(self.config.lora),)
    return ()

  def trained_extensions(self) -> tuple[Extension, ...]:
    if self.config.heat.tune == "lora" and self.selected is not None:
      return (lora_spec(self.config.lora, head_mask=self.selected),)
    return self.extensions()

  def resume_state(self) -> dict[str, Any]:
    if self.selected is None:
      return {}
    # The scoring facts go along, so a resumed run reports what the scoring run did.
    info = {k: v for k, v in self.info.items() if k != "selection_restored"}
    return {"selected": self.selected.tolist(), "info": info}

  def restore(self, state: dict[str, Any]) -> None:
    if "selected" not in state:   # a resumed run never scores again
      raise CheckpointError("the run's checkpoint holds no HEAT head selection; rerun with "
                            "--config.train.resume=False")
    self.selected = np.asarray(state["selected"], bool)
    self.info.update(state.get("info", {}))
    self.info["selection_restored"] = True

  @property
  def changes_model_after_fit(self) -> bool:
    return self.config.heat.tune == "lora"   # the head mask is a field of the LoRA module

  def _scoring_params(self, ctx: MethodContext, feed: Feed) -> dict:
    """Parameters with the scoring classifier; fits the probe where one is needed."""
    imp = self.config.importance
    # The probe's least squares needs every feature on every process: all rows.
    batches = feed.batches(ctx.task.train, imp.batch_size, local=False)
    params, self.probe = scoring_params(
        ctx.model, ctx.params, batches, classifier=imp.classifier,
        seed=int(self.config.seed), l2=float(imp.probe_l2), model_state=ctx.model_state)
    if imp.classifier == "random" and imp.keep_probe:   # a probe to start training from
      from heat_jax.importance import probe as probe_lib
      self.probe = probe_lib.fit_head_probe(
          ctx.model, ctx.params, feed.batches(ctx.task.train, imp.batch_size, local=False),
          l2=float(imp.probe_l2), model_state=ctx.model_state)
    if self.probe is not None:
      self.info.update({f"probe_{k}": v for k, v in self.probe.info().items()})
    return params

  def _scores(self, ctx: MethodContext) -> np.ndarray:
    """TIS of every head through the scoring classifier (fitting the probe if needed)."""
    from heat_jax import importance
    imp = self.config.importance
    feed = ctx.feed or Feed.create()
    start = time.time()   # tis_seconds: the probe (if any) and the scoring pass
    params = self._scoring_params(ctx, feed)
    # Sharded like training: over every device of every process, each process loading
    # its rows of every batch; every process gets the same scores and selection.
    batches = feed.batches(ctx.task.train, imp.batch_size)
    kind = get_task_kind(self.config.get("task_kind", "classification"), self.config)
    loss_fn = (None if kind.name == "classification"   # TIS through the task's own loss
               else lambda logits, label, mask: kind.loss(logits, {"label": label,
                                                                   "mask": mask}))
    scores = importance.compute_tis(ctx.model, params, batches, strategy=imp.strategy,
                                    num_batches=imp.num_batches or None, loss_fn=loss_fn,
                                    normalize=imp.normalize, model_state=ctx.model_state,
                                    mesh=feed.mesh, aggregate=imp.aggregate)
    self.info["tis_seconds"] = round(time.time() - start, 3)
    return scores

  def fit(self, ctx: MethodContext) -> None:
    """Computes TIS on the training data and selects heads (saved to the workdir).

    With a restored selection (a resumed run) only its shape is checked.
    """
    from heat_jax import importance  # the scoring stack is only needed here
    layout = head_layout(ctx.model)
    if self.selected is not None:
      if self.selected.shape != layout.shape:
        raise ConfigError(f"the checkpoint's head selection has shape "
                          f"{self.selected.shape}, the model {layout.shape}")
      return
    if ctx.task is None:
      raise ConfigError("heat needs training data to score heads")
    imp, h = self.config.importance, self.config.heat
    key = scores_key(self.config) if ctx.memo is not None else None
    if key is not None and key in ctx.memo:   # an earlier run of the study scored them
      scores, self.probe, info = ctx.memo[key]
      scores = np.array(scores)
      self.info.update(info, tis_shared=True)
    else:
      scores = self._scores(ctx)
      if key is not None:   # with what scoring wrote into info (probe_*, tis_seconds)
        ctx.memo[key] = (scores, self.probe, dict(self.info))
    if not np.any(scores[layout.valid]):
      raise ConfigError(f"all head importance scores are 0 (no gradient reaches the "
                        f"attention heads through the {imp.classifier!r} classifier), so "
                        f"HEAT cannot rank the heads")
    selected = importance.select_heads(scores, h.budget, scope=h.scope, select=h.select,
                                       seed=h.select_seed, valid=layout.valid,
                                       deactivate=h.deactivate)
    self.info.update(tis_classifier=imp.classifier,
                     heads_selected=int(selected.sum()), heads_total=layout.total_heads)
    if ctx.workdir and distributed.is_primary():
      meta = {"strategy": imp.strategy, "normalize": imp.normalize,
              "classifier": imp.classifier, "keep_probe": bool(imp.keep_probe),
              "probe_l2": imp.probe_l2, "scope": h.scope,
              "budget": h.budget, "deactivate": h.deactivate, "select": h.select,
              "select_seed": h.select_seed, "num_batches": imp.num_batches}
      importance.save_importance(ctx.workdir, scores, selected, layout=layout, meta=meta)
      importance.plot_importance(os.path.join(ctx.workdir, "importance.png"), scores,
                                 selected, valid=layout.valid,
                                 title=f"{ctx.task.name}: TIS ({imp.strategy}), "
                                 f"{int(selected.sum())} {h.select} heads kept")
    self.selected = selected

  def initial_params(self, ctx: MethodContext) -> dict:
    """With `importance.keep_probe`, training starts from the probe (LP-FT style)."""
    imp = self.config.importance
    if self.probe is None or not imp.keep_probe:
      return ctx.params
    from heat_jax.importance import probe as probe_lib
    self.info["probe_kept"] = True
    return probe_lib.with_probe(ctx.params, self.probe)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    if self.selected is None:
      raise RuntimeError("heat: call fit(ctx) (or restore a selection) before trainable_mask")
    selected = self.selected
    self.info.setdefault("heads_selected", int(selected.sum()))
    if self.config.heat.tune == "lora":
      mask = head_lora_mask(ctx.params, selected)
    else:
      mask = head_weight_mask(ctx.params, selected)
    return self.with_head(ctx.params, mask)
