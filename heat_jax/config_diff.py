"""Which config fields differ between a workdir's earlier run and this one.

A run refuses a workdir that holds a run of another config (`heat_jax.experiment`);
`refusal` words that error with the differing fields (`train.epochs: 2 -> 3`) and the
two ways on. The earlier config comes from `results.json` ("config") or, for a run
that never finished, from its checkpoint's meta ("config", `as_json`).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from heat_jax.errors import ConfigError

SHOWN = 6   # fields named in the refusal; the rest are counted


def as_json(config: Any) -> dict:
  """The config as plain JSON values (what results.json and the checkpoint meta hold)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d, sort_keys=True, default=str))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix.rstrip("."): d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


_ABSENT = object()


def changed_fields(old: Any, new: Any, ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
  """[(dotted field, old value, new value)] for every field that differs, sorted.

  A field only one side has shows `<absent>` on the other. Values are compared after a
  JSON round trip, so a tuple equals the list results.json stored for it.
  """
  a, b = _flat(as_json(old)), _flat(as_json(new))
  skip = set(ignore)
  out = []
  for key in sorted(set(a) | set(b)):
    if key in skip:
      continue
    va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if va != vb or type(va) is not type(vb):   # 2 vs 2.0 change a fingerprint too
      out.append((key, va, vb))
  return out


def _show(value: Any) -> str:
  return "<absent>" if value is _ABSENT else json.dumps(value)


def describe(changes: list[tuple[str, Any, Any]]) -> str:
  """`train.epochs: 2 -> 3, optim.lr: 0.001 -> 0.01` (and how many more)."""
  shown = [f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in changes[:SHOWN]]
  more = len(changes) - SHOWN
  return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def refusal(workdir: str, old_config: Optional[dict], new_config: Any, *,
            finished: bool = False, ignore: Iterable[str] = ()) -> ConfigError:
  """The error for a workdir holding a run of another config, naming what differs."""
  what = "a finished run" if finished else "a run"
  changes = changed_fields(old_config, new_config, ignore) if old_config else []
  if changes:
    diff = f" ({describe(changes)})"
  elif old_config:
    diff = " (the same fields, but another fingerprint: it was made by another version)"
  else:
    diff = " (its config is not recorded)"
  return ConfigError(f"workdir {workdir} holds {what} with a different config{diff}; use a "
                     "new --workdir, or --config.train.resume=False to delete that run and "
                     "start over")
