"""Taylor-expansion importance scores (TIS) of every attention head in one jitted step.

Strategies (README.md, HEAT options), for head h of layer l:

  qkv   sum of |theta * dL/dtheta| over the head's q/k/v kernel slices, its q and v
        bias slices (and, on Swin, its column of the relative-position bias table). The
        key bias is left out: it adds q . b_k to every logit of a query alike, which the
        softmax removes, so its gradient is exactly 0 (only rounding noise remains)
  out   sum of |theta * dL/dtheta| over the out kernel slice W_o[h]
  head  qkv + out (default)
  gate  |dL/dxi[l, h]|, xi the head gate (exact first-order effect of removing the head)

`make_tis_step` builds ONE jitted function that returns the scores of all heads of all
layers for one batch: a single gradient w.r.t. the gate array (`gate`) or w.r.t. only the
attention parameters the strategy needs (the rest of the tree is held constant), followed
by per-head reductions over the head axis. The Python loop over attention layers happens
at trace time only. `compute_tis` averages the per-batch absolute scores over batches,
each batch weighted by its number of real (mask = 1) rows, and can divide every layer by
its RMS (`normalize='layer'`); given a `mesh` (multi-device or multi-process), each batch
is sharded over it along 'data' and every process gets the same scores.
`ablation_scores` is the slow reference (one forward pass per removed head).

Aggregation (`aggregate`):
  batch    (default) |theta * dL_B/dtheta| with L_B the mean loss of a batch: the
           absolute value is taken AFTER the gradient is averaged over the batch, so
           examples whose gradients disagree in sign cancel. The score therefore depends
           on `importance.batch_size`: as it grows the score tends to |theta * E[g]|,
           with batch 1 it equals `example`. Scores of different batch sizes are not
           comparable (the ranking usually changes little).
  example  the mean over examples of |theta * dL_i/dtheta|: independent of the batch
           size; one gradient per example (lax.map over the batch, memory of one), so it
           costs about a backward pass per example instead of per batch.
"""

from __future__ import annotations

import collections
import functools
import itertools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from heat_jax import distributed
from heat_jax.errors import ConfigError, DataError
from heat_jax.importance.sites import (BIAS_TABLE, PROJECTIONS, AttentionSite, check_sites,
                                       find_attention_sites, unwrap_params)
from heat_jax.losses import masked_cross_entropy
from heat_jax.models.apply import apply_model
from heat_jax.models.attention_paths import get_subtree
from heat_jax.models.registry import head_layout

Array = jax.Array
Params = Mapping[str, Any]
Batch = Mapping[str, Any]
# loss_fn(logits [B, C], labels [B], mask [B]) -> scalar
LossFn = Callable[[Array, Array, Array], Array]
Step = Callable[[Params, Batch], Array]

STRATEGIES = ("qkv", "out", "head", "gate")
AGGREGATES = ("batch", "example")
NORMALIZE = ("none", "layer")
# "table": Swin's relative-position bias column of the head (trains with the head).
_PARAM_GROUPS = {"qkv": PROJECTIONS + ("table",), "out": ("out",),
                 "head": PROJECTIONS + ("out", "table")}
_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_CACHE_SIZE = 16


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
  """Reuses jitted functions for equal (model, options) keys so repeated calls compile
  once; falls back to building afresh for unhashable keys."""
  try:
    hash(key)
  except TypeError:
    return build()
  if key in _CACHE:
    _CACHE.move_to_end(key)
    return _CACHE[key]
  _CACHE[key] = value = build()
  if len(_CACHE) > _CACHE_SIZE:
    _CACHE.popitem(last=False)
  return value


def check_strategy(strategy: str) -> str:
  if strategy not in STRATEGIES:
    raise ConfigError(f"importance strategy must be one of {', '.join(STRATEGIES)}; "
                      f"got {strategy!r}")
  return strategy


def check_normalize(normalize: str) -> str:
  if normalize not in NORMALIZE:
    raise ConfigError(f"importance normalize must be one of {', '.join(NORMALIZE)}; "
                      f"got {normalize!r}")
  return normalize


def normalize_scores(scores: np.ndarray, normalize: str = "none",
                     valid: Optional[np.ndarray] = None) -> np.ndarray:
  """`'layer'`: divides every layer's row by its RMS over the layer's heads.

  RMS, not the L2 norm: after L2 normalisation a head of a 4-head layer scores
  sqrt(8) times one of an equally flat 32-head layer (Swin stages), which would
  favour layers with few heads in a global ranking. All-zero rows stay zero.
  """
  check_normalize(normalize)
  scores = np.array(scores, dtype=np.float64)
  valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid, bool)
  scores[~valid] = 0.0
  if normalize == "layer":
    counts = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    rms = np.sqrt(np.sum(scores ** 2, axis=1, keepdims=True) / counts)
    scores = np.divide(scores, rms, out=np.zeros_like(scores), where=rms > 0)
  return scores


def _batch_arrays(batch: Batch) -> tuple[Any, Any, Any]:
  image, label = batch["image"], batch["label"]
  mask = batch.get("mask")
  if mask is None:
    mask = np.ones((len(label),), np.float32)
  return image, label, mask


def _num_real(batch: Batch) -> float:
  mask = batch.get("mask")
  if isinstance(mask, jax.Array):  # a global batch: summed over every process's rows
    return float(jnp.sum(mask))
  return float(len(batch["label"]) if mask is None else np.sum(np.asarray(mask)))


def _gate_dtype(params: Params, sites: Sequence[AttentionSite]) -> Any:
  kernel = get_subtree(params, sites[0].leaf("query", "kernel"))
  return jnp.promote_types(kernel.dtype, jnp.float32)


def _gated_loss(model: Any, loss_fn: LossFn, params: Params, model_state: Any, image: Array,
                label: Array, mask: Array, gates: Optional[Array]) -> Array:
  """Eval-mode loss of the model with head gates (None = plain model)."""
  logits, _ = apply_model(model, unwrap_params(params), model_state, image, train=False,
                          head_gates=gates)
  return loss_fn(logits, label, mask)


def _group_leaves(site: AttentionSite, group: str) -> list[tuple[str, ...]]:
  """Parameter paths of one group ('query' / 'key' / 'value' / 'out' / 'table')."""
  if group == "table":
    return [site.leaf(BIAS_TABLE)] if site.has_table else []
  if group in ("out", "key") or not site.has_bias:   # dL/db_k = 0 exactly (module doc)
    return [site.leaf(group, "kernel")]
  return [site.leaf(group, "kernel"), site.leaf(group, "bias")]


def _per_head(site: AttentionSite, group: str, theta: dict, grad: dict) -> Array:
  """[heads] sums of |theta * grad| over one group's slices of each head."""
  if group == "table":  # [positions, heads]
    if not site.has_table:
      return jnp.zeros((site.num_heads,), jnp.float32)
    key = site.leaf(BIAS_TABLE)
    dtype = jnp.promote_types(theta[key].dtype, jnp.float32)
    return jnp.sum(jnp.abs(theta[key].astype(dtype) * grad[key].astype(dtype)), axis=0)
  kernel = site.leaf(group, "kernel")
  dtype = jnp.promote_types(theta[kernel].dtype, jnp.float32)
  t = jnp.abs(theta[kernel].astype(dtype) * grad[kernel].astype(dtype))
  if group == "out":  # [heads, head_dim, hidden]
    return jnp.sum(t, axis=(1, 2))
  row = jnp.sum(t, axis=(0, 2))  # [hidden, heads, head_dim]
  if site.has_bias and group != "key":
    bias = site.leaf(group, "bias")
    row = row + jnp.sum(jnp.abs(theta[bias].astype(dtype) * grad[bias].astype(dtype)), axis=1)
  return row


def check_aggregate(aggregate: str) -> str:
  if aggregate not in AGGREGATES:
    raise ConfigError(f"importance aggregate must be one of {', '.join(AGGREGATES)}; "
                      f"got {aggregate!r}")
  return aggregate


def make_tis_step(model: Any, strategy: str = "head", *,
                  loss_fn: Optional[LossFn] = None, aggregate: str = "batch") -> Step:
  """Returns `step(params, batch) -> [layers, max_heads]` scores of one batch (jitted).

  Entries of absent heads (ragged Swin rows) are 0. `batch` needs `image` and `label`;
  `mask` (1 = real row) defaults to ones. Equal (model, strategy, loss_fn, aggregate)
  share one jitted function. `aggregate='example'`: the mean over the batch's real rows
  of each example's own scores (module doc).
  """
  check_strategy(strategy)
  check_aggregate(aggregate)
  return _cached(("tis", model, strategy, loss_fn, aggregate),
                 lambda: _build_tis_step(model, strategy, loss_fn, aggregate))


def _build_tis_step(model: Any, strategy: str, loss_fn: Optional[LossFn],
                    aggregate: str = "batch") -> Step:
  layout = head_layout(model)
  valid = layout.valid
  loss_fn = loss_fn or masked_cross_entropy

  loss_of = functools.partial(_gated_loss, model, loss_fn)

  @jax.jit
  def scores(params, model_state, image, label, mask):
    params = flax.core.unfreeze(unwrap_params(params))
    sites = find_attention_sites(params)  # trace time only
    check_sites(sites, layout)
    if strategy == "gate":
      gates = jnp.ones(layout.shape, _gate_dtype(params, sites))
      grad = jax.grad(lambda g: loss_of(params, model_state, image, label, mask, g))(gates)
      return jnp.where(valid, jnp.abs(grad), 0)

    groups = _PARAM_GROUPS[strategy]
    flat = flax.traverse_util.flatten_dict(params)
    keys = [k for site in sites for group in groups for k in _group_leaves(site, group)]
    theta = {k: flat[k] for k in keys}

    def loss_attn(attn):
      merged = flax.traverse_util.unflatten_dict({**flat, **attn})
      return loss_of(merged, model_state, image, label, mask, None)

    grad = jax.grad(loss_attn)(theta)
    rows = []
    for site in sites:
      row = sum(_per_head(site, group, theta, grad) for group in groups)
      rows.append(jnp.pad(row, (0, layout.max_heads - site.num_heads)))
    return jnp.stack(rows)

  @jax.jit
  def per_example(params, model_state, image, label, mask):
    """Mean over real rows of each example's scores (one gradient per example)."""
    def one(args):
      img, lab, m = args
      return scores(params, model_state, img[None], lab[None], jnp.ones((1,), m.dtype)) * m
    each = jax.lax.map(one, (image, label, mask))
    return jnp.sum(each, axis=0) / jnp.maximum(jnp.sum(mask), 1)

  fn = scores if aggregate == "batch" else per_example

  def step(params: Params, batch: Batch, model_state: Optional[Params] = None) -> Array:
    return fn(params, model_state or {}, *_batch_arrays(batch))

  step.jitted = fn  # type: ignore[attr-defined]
  return step


def _take(batches: Iterable[Batch], num_batches: Optional[int]) -> tuple[Iterable[Batch],
                                                                          Optional[int]]:
  """First `num_batches` batches (None or 0 = all) and their count if known."""
  if num_batches is not None and num_batches < 0:
    raise ConfigError(f"num_batches must be >= 0 (0 = all), got {num_batches}")
  total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
  if num_batches:
    batches = itertools.islice(batches, num_batches)
    total = num_batches if total is None else min(total, num_batches)
  return batches, total


def compute_tis(model: Any, params: Params, batches: Iterable[Batch], *,
                strategy: str = "head", num_batches: Optional[int] = None,
                normalize: str = "none", loss_fn: Optional[LossFn] = None,
                progress: Optional[bool] = None,
                model_state: Optional[Params] = None,
                mesh: Optional[jax.sharding.Mesh] = None,
                aggregate: str = "batch") -> np.ndarray:
  """Taylor-expansion importance of every head: float64 [layers, max_heads].

  Args:
    model: a ViT or Swin module (`heat_jax.models.head_layout(model)` gives the layout;
      its `.valid` marks the entries that are heads, the others are 0 here).
    params: the model's parameters (the pretrained model being adapted).
    batches: iterable of {image, label, mask} batches; batches with no real row are skipped.
    strategy: 'qkv' | 'out' | 'head' | 'gate'.
    num_batches: use the first `num_batches` batches (None or 0 = all).
    normalize: 'none' | 'layer' (divide each layer by its RMS, for global ranking).
    loss_fn: `loss_fn(logits, labels, mask) -> scalar`; default
      `heat_jax.losses.masked_cross_entropy` (mean over mask == 1 rows).
    progress: tqdm bar (None = only on a terminal).
    model_state: the model's non-parameter collections (e.g. batch statistics).
    mesh: a 1-D 'data' mesh (`heat_jax.distributed.make_mesh`) to shard every batch
      over; parameters are replicated on it. In a multi-process run every process
      calls this with its rows of each global batch
      (`heat_jax.distributed.local_rows(batch_sharding(mesh), batch_size)`) and gets
      the scores of the global batches. None: the default device.
    aggregate: 'batch' (abs of the batch-mean gradient product; depends on the batch
      size) | 'example' (mean of per-example absolute scores). See the module doc.

  Returns:
    The mean over batches of each batch's (absolute) scores, each batch weighted by
    its number of real rows (a padded last batch with 3 real rows counts 3 / B).
  """
  check_strategy(strategy)
  check_normalize(normalize)
  layout = head_layout(model)
  step = make_tis_step(model, strategy, loss_fn=loss_fn, aggregate=aggregate)
  if mesh is None:
    params = jax.device_put(params)
    model_state = jax.device_put(model_state or {})
  else:
    params = distributed.replicate(params, distributed.replicated(mesh))
    model_state = distributed.replicate(model_state or {}, distributed.replicated(mesh))
  batches, total_batches = _take(batches, num_batches)
  total = np.zeros(layout.shape, np.float64)
  weight, pending = 0.0, None
  # None: a bar on terminals only; never in the non-primary processes.
  disable = True if not distributed.is_primary() else (
      None if progress is None else not progress)
  bar = tqdm(batches, total=total_batches, desc=f"TIS ({strategy})", unit="batch",
             disable=disable, leave=False)
  for batch in bar:
    if mesh is not None:  # one global batch from every process's rows
      image, label, mask = _batch_arrays(batch)
      batch = distributed.put_batch({"image": image, "label": label, "mask": mask},
                                    distributed.batch_sharding(mesh))
    real = _num_real(batch)  # with a mesh: the real rows of all processes
    if real == 0:
      continue
    out = step(params, batch, model_state)  # dispatched; the previous one is fetched meanwhile
    if pending is not None:
      total += pending[1] * np.asarray(distributed.fetch(pending[0]), np.float64)
    pending, weight = (out, real), weight + real
  if pending is not None:
    total += pending[1] * np.asarray(distributed.fetch(pending[0]), np.float64)
  bar.close()
  if weight == 0:
    raise DataError("importance scores need at least one batch with a real (mask = 1) row")
  return normalize_scores(total / weight, normalize, layout.valid)


def ablation_scores(model: Any, params: Params, batches: Iterable[Batch], *,
                    num_batches: Optional[int] = None, loss_fn: Optional[LossFn] = None,
                    heads: Optional[Sequence[tuple[int, int]]] = None,
                    progress: Optional[bool] = None,
                    model_state: Optional[Params] = None) -> np.ndarray:
  """Reference (slow): loss(head gated to 0) - loss(plain model), float64 [layers, max_heads].

  One jitted forward pass per head per batch; averaged over batches like `compute_tis`
  (weighted by real rows, i.e. the loss change on the real examples).
  `heads` restricts the evaluation to a list of (layer, head) (others are NaN); absent
  heads of ragged layouts are 0. Used by tests and studies, never by training.
  """
  layout = head_layout(model)
  valid = layout.valid
  if heads is None:
    heads = [tuple(int(i) for i in lh) for lh in zip(*np.nonzero(valid))]
  else:
    heads = [(int(l), int(h)) for l, h in heads]
    bad = [lh for lh in heads if not (0 <= lh[0] < layout.num_layers
                                      and 0 <= lh[1] < layout.max_heads and valid[lh])]
    if bad:
      raise ConfigError(f"ablation heads {bad} are not heads of this model "
                        f"(heads per layer {layout.heads_per_layer})")
  loss_fn = loss_fn or masked_cross_entropy
  params = jax.device_put(params)
  model_state = jax.device_put(model_state or {})
  sites = find_attention_sites(params)
  check_sites(sites, layout)
  ones = np.ones(layout.shape, _gate_dtype(unwrap_params(params), sites))

  loss = _cached(("ablation", model, loss_fn), lambda: jax.jit(functools.partial(_gated_loss, model, loss_fn)))

  batches, total_batches = _take(batches, num_batches)
  total = np.zeros(layout.shape, np.float64)
  weight = 0.0
  bar = tqdm(total=None if total_batches is None else total_batches * (len(heads) + 1),
             desc="head ablation", unit="fwd",
             disable=None if progress is None else not progress, leave=False)
  for batch in batches:
    real = _num_real(batch)
    if real == 0:
      continue
    arrays = jax.device_put(_batch_arrays(batch))
    base = float(loss(params, model_state, *arrays, ones))
    bar.update()
    for l, h in heads:
      gates = ones.copy()
      gates[l, h] = 0
      total[l, h] += real * (float(loss(params, model_state, *arrays, gates)) - base)
      bar.update()
    weight += real
  bar.close()
  if weight == 0:
    raise DataError("ablation scores need at least one batch with a real (mask = 1) row")
  result = np.full(layout.shape, np.nan)
  result[~valid] = 0.0
  for lh in heads:
    result[lh] = total[lh] / weight
  return result
