"""KAdaptation (He et al., arXiv 2203.16329): Kronecker-product updates of q and v.

The update of an adapted projection W (in x out, width D) is

  dW = scale * sum_{i<n} A_i (x) B_i,   A_i = l_i r_i (n x n),   B_i = u_i v_i (m x m),

with m = D / n, A-major Kronecker indexing H[a*m + k, c*m + p] = A_i[a, c] B_i[k, p], and
applied as `x @ dW`. The "slow" weights A_i (`kadaptation_rules`, rank `rule_rank`)
are shared by every attention block of the model, one set per target; the "fast"
weights u_i (n, m, rank), v_i (n, rank, m) belong to each block (`kadaptation_<target>`),
and one bias b (`kadaptation_bias`, D reshaped to [heads, head_dim]) per block is added
to every target's delta. The output axis D of dW is the projection's (heads, head_dim)
axis in row-major order, as in the kernels [D, heads, head_dim].

Forward: x is reshaped to (..., n, m) and contracted with u, l, r and v in turn, so the
D x D matrix is never built; `merge` builds it once to fold it into the kernels. Weight
dropout (`dropout` > 0) zeroes elements of the assembled dW, one mask per step shared by
the batch as in the released code; an element mask has no factored form, so in train
mode with dropout the block builds dW (cost ~ the frozen projection's own matmul).
Evaluation and the default `dropout=0` never build it.

Deviations from the released code (eric-ai-lab/PEViT, documented in the README):
  * `init=lora` (default): u random, v = 0, so dW = 0 at step 0 but v gets a gradient at
    once and u, A from the second step. The code zero-fills both u and v
    (`init=code_zero`), which keeps u, v and A at exactly zero for the whole run: only
    the bias learns.
  * `share_qv_fast_weights=False` (default): v has its own fast weights. The code's v
    update reuses q's fast weights (`share_qv_fast_weights=True`); its own v fast
    weights are then never created here (the code creates and counts them unused).
  * The delta lands in the right token / head slots (the code's reshape scrambles them).

As released (defaults here):
  * `q_placement=after_scale`: the released MultiheadAttention adds the q delta (and
    the bias) to q AFTER q was scaled by 1 / sqrt(head_dim); the v delta has no scale.
    Here the hook sees q before the attention scales it, so the q delta and its bias
    are multiplied by sqrt(head_dim) (exact, and `merge` folds the same factor).
    `before_scale` adds them to the unscaled q (this project's earlier behaviour: on
    ViT-B the q update is then 1/8 of the released one).
  * `head=bn_linear` (option; default `linear`): the released classifier reads the
    image feature through BatchNorm without affine (eps 1e-5, momentum 0.1, running
    statistics in `batch_stats`) and then a linear layer. The released head is
    initialised from CLIP's zero-shot text embeddings; with no text tower here it
    starts as the project's classifier. Not mergeable (the merged file has a plain head).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heat_jax.errors import ConfigError
from heat_jax.methods.base import Method, MethodContext, register_method
from heat_jax.models import create_model, model_family
from heat_jax.models.attention_paths import attention_paths, get_subtree
from heat_jax.models.extensions import Extension, Site, register_extension
from heat_jax.training import partition

Array = jax.Array
TARGETS = ("query", "key", "value")
INITS = ("lora", "code_zero")
Q_PLACEMENTS = ("after_scale", "before_scale")
# The released head reads the ViT's pooled class token (declared like Extension.families).
BN_LINEAR_FAMILIES = ("vit",)
HEADS = ("linear", "bn_linear")
PREFIX = "kadaptation_"
RULES = "kadaptation_rules"
BIAS = "kadaptation_bias"
RULE_INIT_RANGE = 0.01            # A factors ~ U(-0.01, 0.01), as the released code


def rule_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  return jax.random.uniform(key, shape, dtype, -RULE_INIT_RANGE, RULE_INIT_RANGE)


class FastWeights(nn.Module):
  """Per-block factors of B_i = u_i v_i: u [n, m, rank], v [n, rank, m]."""

  n: int
  m: int
  rank: int
  init: str = "lora"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    u_init = (nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
              if self.init == "lora" else nn.initializers.zeros)
    u = self.param("u", u_init, (self.n, self.m, self.rank), self.param_dtype)
    v = self.param("v", nn.initializers.zeros, (self.n, self.rank, self.m), self.param_dtype)
    return u, v


class SlowWeights(nn.Module):
  """Shared A_i = l_i r_i per target: `<t>_left` [n, n, rank], `<t>_right` [n, rank, n]."""

  targets: tuple[str, ...]
  n: int
  rank: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> dict[str, tuple[Array, Array]]:
    return {t: (self.param(f"{t}_left", rule_init, (self.n, self.n, self.rank),
                           self.param_dtype),
                self.param(f"{t}_right", rule_init, (self.n, self.rank, self.n),
                           self.param_dtype))
            for t in self.targets}


def kron_delta(x: Array, left: Array, right: Array, u: Array, v: Array) -> Array:
  """x @ sum_i A_i (x) B_i in factored form; x [..., D] -> [..., D]; D = n * m.

  t[i,a,s] = sum_k x[a,k] u[i,k,s];  w[i,q,s] = sum_a t l[i,a,q];
  z[i,c,s] = sum_q w r[i,q,c];        out[c,p] = sum_{i,s} z v[i,s,p].
  """
  n, m = u.shape[0], u.shape[1]
  xr = x.reshape(*x.shape[:-1], n, m)
  t = jnp.einsum("...ak,iks->...ias", xr, u)
  w = jnp.einsum("...ias,iaq->...iqs", t, left)
  z = jnp.einsum("...iqs,iqc->...ics", w, right)
  out = jnp.einsum("...ics,isp->...cp", z, v)
  return out.reshape(*x.shape[:-1], n * m)


def kron_matrix(left: Any, right: Any, u: Any, v: Any, xp: Any = jnp) -> Any:
  """The D x D matrix sum_i A_i (x) B_i (in x out, A-major); `xp` numpy or jax.numpy."""
  n, m = u.shape[0], u.shape[1]
  a = xp.einsum("iaq,iqc->iac", left, right)
  b = xp.einsum("iks,isp->ikp", u, v)
  return xp.einsum("iac,ikp->akcp", a, b).reshape(n * m, n * m)


@register_extension
@dataclasses.dataclass(frozen=True)
class KAdaptationSpec(Extension):
  """Kronecker adaptation of the attention projections in `targets` (see module doc)."""

  n: int = 32
  rank: int = 1
  rule_rank: int = 1
  scale: float = 160.0
  dropout: float = 0.0
  bias: bool = True
  targets: tuple[str, ...] = ("query", "value")
  init: str = "lora"
  share_qv_fast_weights: bool = False
  q_placement: str = "after_scale"
  head_kind: str = "linear"

  kind = "kadaptation"
  param_names = (RULES, BIAS) + tuple(f"{PREFIX}{t}" for t in TARGETS)

  @property
  def mergeable(self) -> bool:  # type: ignore[override]
    return self.head_kind == "linear"

  def delta_factor(self, target: str, head_dim: int) -> float:
    """What the delta of `target` is multiplied by to land where the release adds it."""
    if target == "query" and self.q_placement == "after_scale":
      return math.sqrt(head_dim)   # the attention then scales q (and the delta) by 1/sqrt
    return 1.0

  def fast_source(self, target: str) -> str:
    """Whose fast weights `target` uses (v reuses q's with share_qv_fast_weights)."""
    return "query" if self.share_qv_fast_weights and target == "value" else target

  def shared(self, host: nn.Module) -> dict[str, tuple[Array, Array]]:
    return SlowWeights(self.targets, self.n, self.rule_rank, host.param_dtype,
                       name=RULES)()

  def project(self, host: nn.Module, site: Site, name: str, x: Array, y: Array, *,
              shared: Any, deterministic: bool) -> Array:
    if name not in self.targets:
      return y
    d = x.shape[-1]
    if d % self.n:
      raise ValueError(f"kadaptation: width {d} (layer {site.layer}) is not divisible by "
                       f"n={self.n}")
    u, v = self._fast_weights(host, name, d // self.n)
    left, right = shared[name]
    cast = lambda a: a.astype(x.dtype)  # noqa: E731
    if self.dropout > 0 and not deterministic:
      # Element dropout on dW has no factored form: build dW in train mode only.
      h = kron_matrix(*map(cast, (left, right, u, v)))
      keep = jax.random.bernoulli(host.make_rng("dropout"), 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(x.dtype)
      delta = x @ h
    else:
      delta = kron_delta(x, *map(cast, (left, right, u, v)))
    delta = (delta * self.scale).reshape(*delta.shape[:-1], site.num_heads, site.head_dim)
    if self.bias:
      delta = delta + self._layer_bias(host, site).astype(delta.dtype)
    factor = self.delta_factor(name, site.head_dim)
    if factor != 1.0:
      delta = delta * jnp.asarray(factor, delta.dtype)
    return y + delta.astype(y.dtype)

  def head(self, host: nn.Module, features: Array, tokens: Any, num_classes: int, *,
           shared: Any, train: bool) -> Optional[Array]:
    """`bn_linear`: BatchNorm1d(affine=False) on the feature, then the classifier."""
    if self.head_kind != "bn_linear":
      return None
    kw = dict(dtype=host.dtype, param_dtype=host.param_dtype)
    normed = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False,
                          momentum=0.9, epsilon=1e-5, name="kadaptation_head_norm",
                          **kw)(features)
    return nn.Dense(num_classes, kernel_init=nn.initializers.zeros, name="head",
                    **kw)(normed)

  def _fast_weights(self, host: nn.Module, target: str, m: int) -> tuple[Array, Array]:
    source = self.fast_source(target)
    name = f"{PREFIX}{source}"
    if source != target:  # created by the earlier `source` projection of this block
      fast = host.get_variable("params", name)
      return fast["u"], fast["v"]
    return FastWeights(self.n, m, self.rank, self.init, host.param_dtype, name=name)()

  def _layer_bias(self, host: nn.Module, site: Site) -> Array:
    """The block's one bias, shared by its targets: created by the first of them."""
    if host.has_variable("params", BIAS):
      return host.get_variable("params", BIAS)
    return host.param(BIAS, nn.initializers.zeros, (site.num_heads, site.head_dim),
                      host.param_dtype)

  def merge(self, params: dict) -> dict:
    """Folds scale * dW into each target kernel and b into each target bias."""
    flat = {k: np.array(v) for k, v in partition.flatten(params).items()}
    for path in attention_paths(params):
      prefix = "/".join(path)
      head_dim = flat[f"{prefix}/query/kernel"].shape[-1]
      for target in self.targets:
        factor = self.delta_factor(target, head_dim)
        fast = f"{prefix}/{PREFIX}{self.fast_source(target)}"
        factors = (f"{RULES}/{target}_left", f"{RULES}/{target}_right", f"{fast}/u",
                   f"{fast}/v")
        h = kron_matrix(*(flat[k].astype(np.float64) for k in factors), xp=np)
        kernel = f"{prefix}/{target}/kernel"
        flat[kernel] = (flat[kernel] + factor * self.scale * h.reshape(flat[kernel].shape)
                        ).astype(flat[kernel].dtype)
        if self.bias:
          bias = f"{prefix}/{target}/bias"
          flat[bias] = (flat[bias] + factor * flat[f"{prefix}/{BIAS}"]
                        ).astype(flat[bias].dtype)
    return partition.unflatten({k: v for k, v in flat.items() if not is_kadaptation(k)})


def is_kadaptation(path: str) -> bool:
  return any(part.startswith(PREFIX) for part in path.split("/"))


def model_widths(model_name: str) -> list[int]:
  """Every attention width of a named model, in block order (ViT: one; Swin: one per
  stage)."""
  return list(dict.fromkeys(create_model(model_name, 1).widths))


def kadaptation_spec(k: ml_collections.ConfigDict, model_name: str) -> KAdaptationSpec:
  """KAdaptationSpec from `config.kadaptation`, checked against the model's widths."""
  where = "config.kadaptation"
  targets = [t.strip() for t in str(k.targets).split(",") if t.strip()]
  bad = [t for t in targets if t not in TARGETS]
  if bad or not targets:
    raise ConfigError(f"{where}.targets={k.targets!r}: use a comma list of "
                      f"{', '.join(TARGETS)} (e.g. 'query,value')")
  if len(set(targets)) != len(targets):
    raise ConfigError(f"{where}.targets={k.targets!r} repeats a projection")
  targets = [t for t in TARGETS if t in targets]      # the blocks' call order
  for field in ("n", "rank", "rule_rank"):
    if isinstance(k[field], bool) or not isinstance(k[field], int) or k[field] < 1:
      raise ConfigError(f"{where}.{field} must be an integer >= 1, got {k[field]!r}")
  if k.rule_rank > k.n:
    raise ConfigError(f"{where}.rule_rank={k.rule_rank} exceeds n={k.n} (A_i is n x n)")
  if not 0.0 <= k.dropout < 1.0:
    raise ConfigError(f"{where}.dropout must be in [0, 1), got {k.dropout}")
  if not k.scale > 0:
    raise ConfigError(f"{where}.scale must be > 0, got {k.scale}")
  if k.init not in INITS:
    raise ConfigError(f"{where}.init={k.init!r} is not one of {', '.join(INITS)}")
  if k.q_placement not in Q_PLACEMENTS:
    raise ConfigError(f"{where}.q_placement={k.q_placement!r} is not one of "
                      f"{', '.join(Q_PLACEMENTS)}")
  if k.head not in HEADS:
    raise ConfigError(f"{where}.head={k.head!r} is not one of {', '.join(HEADS)}")
  if k.head != "linear" and model_family(model_name) not in BN_LINEAR_FAMILIES:
    raise ConfigError(f"{where}.head={k.head!r} is for ViT models; use linear")
  if k.share_qv_fast_weights and not {"query", "value"} <= set(targets):
    raise ConfigError(f"{where}.share_qv_fast_weights needs both query and value in "
                      f"targets (got {','.join(targets)})")
  for width in model_widths(model_name):
    if width % k.n:
      raise ConfigError(f"{where}.n={k.n} does not divide the width {width} of "
                        f"{model_name}; pick n dividing every attention width")
  return KAdaptationSpec(n=int(k.n), rank=int(k.rank), rule_rank=int(k.rule_rank),
                         scale=float(k.scale), dropout=float(k.dropout), bias=bool(k.bias),
                         targets=tuple(targets), init=str(k.init),
                         share_qv_fast_weights=bool(k.share_qv_fast_weights),
                         q_placement=str(k.q_placement), head_kind=str(k.head))


def count_parameters(widths_per_block: Sequence[int], *, n: int, rank: int = 1,
                     rule_rank: int = 1, targets: int = 2, bias: bool = True,
                     share_qv_fast_weights: bool = False) -> int:
  """Adapter size by the formula: per block 2 * D * rank per fast-weight set plus D
  bias; 2 * n * n * rule_rank per target for the shared A_i."""
  fast_sets = targets - (1 if share_qv_fast_weights else 0)
  per_block = sum(fast_sets * 2 * d * rank + (d if bias else 0) for d in widths_per_block)
  return per_block + targets * 2 * n * n * rule_rank


@register_method
class KAdaptation(Method):
  name = "kadaptation"
  rank_field = "kadaptation.rank"

  @classmethod
  def default_config(cls) -> dict[str, ml_collections.ConfigDict]:
    c = ml_collections.ConfigDict()
    c.n = 32                            # Kronecker terms (phm_dim); must divide the width
    c.rank = 1                          # rank of B_i = u_i v_i
    c.rule_rank = 1                     # rank of the shared A_i = l_i r_i
    c.scale = 160.0                     # released code: (alpha / r) * 5 = (128 / 4) * 5
    c.dropout = 0.0                     # weight dropout on dW, train only (code: 0.5)
    c.bias = True                       # one bias per block added to every target's delta
    c.targets = "query,value"           # comma list of query, key, value
    c.init = "lora"                     # lora (u random, v = 0) | code_zero (u = v = 0)
    c.share_qv_fast_weights = False     # code: True (v reuses q's fast weights)
    c.q_placement = "after_scale"       # as released: q delta added after 1/sqrt(head_dim)
    #                                     | before_scale (to the unscaled q)
    c.head = "linear"                   # linear | bn_linear (released: BN no affine, linear)
    return {"kadaptation": c}

  def extensions(self) -> tuple[Extension, ...]:
    return (kadaptation_spec(self.config.kadaptation, self.config.model.name),)

  def trainable_mask(self, ctx: MethodContext) -> partition.FlatMask:
    mask = partition.mask_from_predicate(ctx.params, lambda k, _: is_kadaptation(k))
    return self.with_head(ctx.params, mask)
