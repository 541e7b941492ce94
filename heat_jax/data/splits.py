"""Whether two split strings can share examples (is the val split really held out?).

Split strings slice and join like TFDS: `train[:800]+validation[:200]`, `test[50%:]`.
Two strings overlap when some part of each names the same base split with ranges that
may intersect. Without the split sizes, ranges are compared when both are absolute
(non-negative example counts) or both are percentages; anything else on the same base
counts as overlapping (the safe answer: no `val` number is then reported). The VTAB
export names of the folder source are expanded: `train800val200` = train800 + val200.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from heat_jax.errors import ConfigError

COMPOSITE = {"train800val200": ("train800", "val200")}
_PART = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*([^\]:]*)\s*:\s*([^\]]*)\s*\])?\s*$")


def _parts(split: str) -> list[tuple[str, Optional[str], Optional[str]]]:
  out = []
  for token in (t for t in split.split("+") if t.strip()):
    m = _PART.match(token)
    if not m:     # unparseable: the whole string as one base split, full range
      out.append((token.strip(), None, None))
      continue
    name, start, stop = m.group(1), m.group(2), m.group(3)
    for sub in COMPOSITE.get(name, (name,)):
      out.append((sub, start or None, stop or None))
  return out


def _bound(value: Optional[str], default: float) -> tuple[Optional[str], float]:
  """(unit, number) of one slice bound: unit 'abs' or '%', None when not comparable."""
  if value is None:
    return "any", default
  value = value.strip()
  try:
    if value.endswith("%"):
      return "%", float(value[:-1])
    number = int(value)
  except ValueError:
    return None, 0.0
  return ("abs", float(number)) if number >= 0 else (None, 0.0)


def _ranges_may_intersect(a: tuple, b: tuple) -> bool:
  (ua0, a0), (ua1, a1) = _bound(a[1], 0.0), _bound(a[2], math.inf)
  (ub0, b0), (ub1, b1) = _bound(b[1], 0.0), _bound(b[2], math.inf)
  units = {u for u in (ua0, ua1, ub0, ub1) if u != "any"}
  if None in units or len(units) > 1:
    return True                                 # not comparable without the sizes
  if units == {"%"}:
    a1, b1 = min(a1, 100.0), min(b1, 100.0)
  return max(a0, b0) < min(a1, b1)


def splits_overlap(first: str, second: str) -> bool:
  """True when `first` and `second` may hold a common example (see module doc)."""
  if not first or not second:
    return False
  return any(pa[0] == pb[0] and _ranges_may_intersect(pa, pb)
             for pa in _parts(first) for pb in _parts(second))


def tuning_splits(data_config: Any) -> dict[str, str]:
  """The `config.data` split fields of the tuning protocol (train800 -> val200).

  The final protocol trains on train800val200 and tests on test; hyper-parameters are
  chosen on runs that train on train800 and report val200 as a held-out `val`:
    * synthetic: train_split train800, val_split val200 (test stays the test split);
    * tfds, a VTAB-1k task: the task table's train800 / val200 (test = val200 too);
    * folder: the NOAH export names train800 / val200 (test = val200).
  ConfigError for anything else (no held-out split is known).
  """
  from heat_jax.data.vtab_tasks import ALIASES, TASKS
  source = data_config.source
  if source == "synthetic":
    return {"data.train_split": "train800", "data.val_split": "val200"}
  if source == "folder":
    return {"data.train_split": "train800", "data.val_split": "val200",
            "data.test_split": "val200"}
  task = TASKS.get(ALIASES.get(data_config.task, data_config.task))
  if source == "tfds" and task is not None:
    s = task.splits(tune=True)
    return {"data.train_split": s["train"], "data.val_split": s["val"],
            "data.test_split": s["test"]}
  raise ConfigError(f"no tuning splits (train800 -> val200) are known for "
                    f"config.data.source={source!r}, task {data_config.task!r}; tune on a "
                    "VTAB-1k task, a folder export or synthetic data")
