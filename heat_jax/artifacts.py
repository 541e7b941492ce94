"""What a user carries away from a run.

* `adapter.npz` + `adapter.json`: only what was trained. Whole trainable leaves are
  stored as they are; element-masked leaves (HEAT's head slices) store just the
  selected elements, in row-major order, with the small mask in the JSON. The number
  of stored scalars equals the reported trainable-parameter count. Model state (e.g.
  batch statistics) is stored beside them under `model_state/<collection>/...` and
  counted separately (`num_state_scalars`). `load_adapter` rebuilds the fine-tuned
  model and its variables on top of the named base checkpoint.
* `merged.npz`: a full checkpoint in the vit_jax on-disk layout (pre-Linen block
  names, mergeable extensions folded into the plain weights by their own `merge`)
  that timm or big_vision can load.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

from heat_jax.checkpoints.vit_npz import LINEN_TO_PRE_LINEN
from heat_jax.errors import CheckpointError, ConfigError
from heat_jax.io_utils import load_npz, write_json, write_npz
from heat_jax.training import partition

ADAPTER_FORMAT = "heat_jax.adapter.v1"
STATE_PREFIX = "model_state/"


def export_adapter(workdir: str, params: dict, mask: partition.FlatMask, *,
                   model_spec: dict, base: dict, model_state: Optional[dict] = None,
                   extra: Optional[dict] = None) -> int:
  """Writes adapter.npz / adapter.json; returns the number of stored trainable scalars."""
  arrays, entries, total = {}, {}, 0
  for key, value in partition.flatten(params).items():
    m = np.asarray(mask[key], bool)
    if not m.any():
      continue
    value = np.asarray(value)
    if partition.is_partial(m):
      full = np.broadcast_to(m, value.shape)
      arrays[key] = value[full]
      entries[key] = {"shape": list(value.shape), "mask_shape": list(m.shape),
                      "mask": m.astype(int).tolist()}
    else:
      arrays[key] = value
      entries[key] = {"shape": list(value.shape)}
    total += int(arrays[key].size)
  state_entries, state_total = {}, 0
  for key, value in partition.flatten(model_state or {}).items():
    value = np.asarray(value)
    arrays[STATE_PREFIX + key] = value
    state_entries[key] = {"shape": list(value.shape)}
    state_total += int(value.size)
  write_npz(os.path.join(workdir, "adapter.npz"), arrays)
  write_json(os.path.join(workdir, "adapter.json"),
             {"format": ADAPTER_FORMAT, "model": model_spec, "base": base,
              "num_scalars": total, "entries": entries,
              "num_state_scalars": state_total, "model_state": state_entries,
              **(extra or {})})
  return total


def apply_adapter(base_params: dict, adapter_dir: str) -> dict:
  """Returns `base_params` with the stored trained values written in."""
  meta = read_adapter_json(adapter_dir)
  arrays = load_npz(os.path.join(adapter_dir, "adapter.npz"))
  return _apply_entries(base_params, meta, arrays)


def adapter_model_state(adapter_dir: str, like: dict) -> dict:
  """The stored model state (e.g. batch statistics), checked against `like`."""
  meta = read_adapter_json(adapter_dir)
  arrays = load_npz(os.path.join(adapter_dir, "adapter.npz"))
  stored = {k: arrays[STATE_PREFIX + k] for k in meta.get("model_state", {})}
  expected = {k: np.shape(v) for k, v in partition.flatten(like).items()}
  if set(stored) != set(expected) or any(np.shape(stored[k]) != expected[k] for k in stored):
    raise CheckpointError(f"{adapter_dir}: the stored model state does not match the "
                          "model's (build the model with the adapter's model spec)")
  return partition.unflatten(stored) if stored else {}


def _apply_entries(base_params: dict, meta: dict, arrays: dict) -> dict:
  flat = {k: np.array(v) for k, v in partition.flatten(base_params).items()}
  for key, entry in meta["entries"].items():
    if key not in flat:
      raise CheckpointError(f"adapter entry {key} is not a parameter of the base model; "
                            "build the model with the adapter's model spec")
    if list(flat[key].shape) != entry["shape"]:
      raise CheckpointError(f"adapter entry {key} has shape {entry['shape']}, the model "
                            f"has {list(flat[key].shape)}")
    if "mask" in entry:
      m = np.broadcast_to(np.asarray(entry["mask"], bool), flat[key].shape)
      flat[key][m] = arrays[key]
    else:
      flat[key] = arrays[key]
  return partition.unflatten(flat)


def read_adapter_json(adapter_dir: str) -> dict:
  path = os.path.join(adapter_dir, "adapter.json")
  if not os.path.exists(path):
    raise CheckpointError(f"no adapter.json in {adapter_dir}; pass the workdir of a "
                          "finished run")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != ADAPTER_FORMAT:
    raise CheckpointError(f"{path} is not a {ADAPTER_FORMAT} file")
  return meta


def load_adapter(adapter_dir: str, *, base_checkpoint: Optional[str] = None
                 ) -> tuple[Any, dict]:
  """Rebuilds (model, variables) of a fine-tuned run from its adapter and base checkpoint.

  `model.apply(variables, images)` gives the fine-tuned model's logits; `variables`
  is {'params': ..., plus any model state such as 'batch_stats'}.
  """
  from heat_jax import checkpoints, model_spec as spec_lib
  meta = read_adapter_json(adapter_dir)
  model = spec_lib.model_from_spec(meta["model"])
  base = base_checkpoint or meta["base"].get("checkpoint")
  rng = jax.random.key(meta["base"].get("init_seed", 0))
  if base:
    params = checkpoints.load_pretrained(base, model, rng=rng,
                                         interpolation=meta["base"].get("interpolation",
                                                                        "zoom"))
  else:
    params = checkpoints.init_params(model, rng=rng)
  state = adapter_model_state(adapter_dir, checkpoints.init_model_state(model, rng=rng))
  return model, {"params": apply_adapter(params, adapter_dir), **state}


def merge_extensions(model: Any, params: dict) -> tuple[Any, dict]:
  """(plain model, plain params): every extension folded in by its own `merge`."""
  for ext in reversed(getattr(model, "extensions", ())):
    if not ext.mergeable:
      raise ConfigError(f"extension {ext.kind!r} cannot be folded into a plain "
                        "checkpoint; export the adapter instead (export_merged=False)")
    params = ext.merge(params)
  return model.clone(extensions=()), params


def merged_vit_arrays(params: dict) -> dict[str, np.ndarray]:
  """vit_jax on-disk arrays (pre-Linen block names) of a plain ViT parameter tree."""
  out = {}
  for key, value in partition.flatten(params).items():
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = LINEN_TO_PRE_LINEN.get(parts[2], parts[2])
    # A writable float32 copy: host copies of device arrays are read-only.
    out["/".join(parts)] = np.array(value, np.float32)
  return out


def export_merged(path: str, model: Any, params: dict) -> None:
  """Writes `merged.npz` (vit_jax layout) of the model with its extensions merged."""
  _, plain = merge_extensions(model, params)
  write_npz(path, merged_vit_arrays(plain))
