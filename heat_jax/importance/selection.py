"""Choosing the heads to adapt from their importance scores.

Budgets (`budget` or the paper's `deactivate`):
  * a count: an integer >= 1 (`budget`) or >= 0 (`deactivate`, heads NOT adapted);
    an integral float above 1 (`8.0`, what a float-typed override gives) is a count too;
  * a fraction: a float 0 < value <= 1 of the heads in scope, rounded half up
    (`floor(fraction * n + 0.5)`); the float `1.0` is all heads and the integer `1` is
    one head (`--config.heat.budget=1.0` vs `=1`: the field keeps the type written). A fractional `budget` keeps at least one head and a
    fractional `deactivate` leaves at least one head, in every scope unit; so with
    `scope='layer'` every layer keeps at least one head and Swin's stages (4, 8, 16, 32
    heads at 0.5) keep 2, 4, 8, 16 heads per block.
  * `scope='global'` applies the budget to all heads of the model, `scope='layer'` to
    each layer (row) separately.

Order: `top` ranks by score descending with ties broken by (layer, head) ascending (a
stable lexicographic sort); `bottom` is exactly the reverse of that order, so
`bottom(k)` is the complement of `top(n - k)`; `random` is a permutation drawn from
`numpy.random.default_rng(seed)` (one per scope unit, in layer order for `layer`).
Invalid (ragged) entries are never selected.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from heat_jax.errors import ConfigError

SCOPES = ("global", "layer")
SELECTS = ("top", "bottom", "random")


def is_fraction(value: float) -> bool:
  """Whether a budget value is a fraction: a float in (0, 1] (`1` is a count, `1.0` all)."""
  return (not isinstance(value, numbers.Integral) and isinstance(value, numbers.Real)
          and 0 < value <= 1)


def _as_count(value: float, n: int, *, name: str, where: str) -> int:
  """Heads designated by `value` (count or fraction) out of `n` (rounded half up)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ConfigError(f"{name} must be a count (integer) or a fraction in (0, 1.0]; "
                      f"got {value!r}")
  if is_fraction(value):
    return int(math.floor(round(value * n, 9) + 0.5))
  if value < 0 or value != int(value):
    raise ConfigError(f"{name} must be a count (integer) or a fraction in (0, 1.0]; "
                      f"got {value!r}")
  count = int(value)
  if count > n:
    raise ConfigError(f"{name}={count} exceeds the {n} heads of {where}")
  return count


def heads_to_keep(n: int, budget: Optional[float] = None,
                  deactivate: Optional[float] = None, *, where: str = "the model") -> int:
  """Number of heads kept out of `n` for a budget or a deactivate value (see module doc).

  A `deactivate` of None or < 0 (the config's -1) is off; when set it overrides `budget`.
  """
  if deactivate is not None and deactivate >= 0:
    drop = _as_count(deactivate, n, name="deactivate", where=where)
    keep = n - drop
    if is_fraction(deactivate) and deactivate < 1:
      keep = max(keep, 1)
    if keep < 1:
      raise ConfigError(f"deactivate={deactivate} leaves no head to adapt in {where} "
                        f"({n} heads)")
    return keep
  if budget is None:
    raise ConfigError("head selection needs a budget (count or fraction) or deactivate")
  if budget == 0:
    raise ConfigError("budget must be >= 1 head or a fraction in (0, 1.0]; got 0")
  keep = _as_count(budget, n, name="budget", where=where)
  return min(max(keep, 1), n)


def top_order(scores: np.ndarray, layers: np.ndarray, heads: np.ndarray) -> np.ndarray:
  """Indices into (layers, heads): score descending, ties by (layer, head) ascending."""
  return np.lexsort((heads, layers, -scores))  # last key is primary


def _ranked(scores: np.ndarray, layers: np.ndarray, heads: np.ndarray, select: str,
            rng: np.random.Generator) -> np.ndarray:
  """Indices into (layers, heads) in selection order."""
  if select == "random":
    return rng.permutation(len(layers))
  top = top_order(scores, layers, heads)
  return top if select == "top" else top[::-1]


def select_heads(scores: np.ndarray, budget: Optional[float] = None, *,
                 scope: str = "global", select: str = "top", seed: int = 0,
                 valid: Optional[np.ndarray] = None,
                 deactivate: Optional[float] = None) -> np.ndarray:
  """Bool mask [layers, max_heads] of the heads to adapt.

  Args:
    scores: [layers, max_heads] importance (higher = more important).
    budget: heads kept: a count >= 1 (int) or a fraction in (0, 1.0] (float; 1.0 = all),
      per layer for scope='layer'.
    scope: 'global' (rank all heads together) or 'layer' (rank within each layer).
    select: 'top' | 'bottom' | 'random' (controls at the same budget).
    seed: seed of `random`.
    valid: bool [layers, max_heads] of existing heads (default all); others never chosen.
    deactivate: the paper's form, heads NOT adapted (count or fraction); overrides
      `budget` when set (None or negative = off).
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2:
    raise ValueError(f"scores must be [layers, heads], got shape {scores.shape}")
  valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid, bool)
  if valid.shape != scores.shape:
    raise ValueError(f"valid {valid.shape} and scores {scores.shape} differ in shape")
  if scope not in SCOPES:
    raise ConfigError(f"heat scope must be one of {', '.join(SCOPES)}; got {scope!r}")
  if select not in SELECTS:
    raise ConfigError(f"heat select must be one of {', '.join(SELECTS)}; got {select!r}")
  if select != "random" and not np.all(np.isfinite(scores[valid])):
    raise ValueError("importance scores contain NaN or infinite values")
  if not valid.any():
    raise ConfigError("there are no heads to select")

  rng = np.random.default_rng(seed)
  selected = np.zeros(scores.shape, bool)
  if scope == "global":
    units = [np.nonzero(valid)]
    wheres = ["the model"]
  else:
    units = [(np.full(int(valid[l].sum()), l), np.nonzero(valid[l])[0])
             for l in range(scores.shape[0]) if valid[l].any()]
    wheres = [f"layer {int(u[0][0])}" for u in units]
  for (layers, heads), where in zip(units, wheres):
    keep = heads_to_keep(len(layers), budget, deactivate, where=where)
    order = _ranked(scores[layers, heads], layers, heads, select, rng)[:keep]
    selected[layers[order], heads[order]] = True
  return selected
