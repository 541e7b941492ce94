"""What a user carries away from a run.

* `adapter.npz` + `adapter.json`: only what was trained. Whole trainable leaves are
  stored as they are; element-masked leaves (HEAT's head slices) store just the
  selected elements, in row-major order, with the small mask in the JSON. The number
  of stored scalars equals the reported trainable-parameter count. `load_adapter`
  rebuilds the fine-tuned model on top of the named base checkpoint.
* `merged.npz`: a full checkpoint in the vit_jax on-disk layout (pre-Linen block
  names, LoRA folded into the kernels) that timm or big_vision can load.
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


def export_adapter(workdir: str, params: dict, mask: partition.FlatMask, *,
                   model_spec: dict, base: dict, extra: Optional[dict] = None) -> int:
  """Writes adapter.npz / adapter.json; returns the number of stored scalars."""
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
  write_npz(os.path.join(workdir, "adapter.npz"), arrays)
  write_json(os.path.join(workdir, "adapter.json"),
             {"format": ADAPTER_FORMAT, "model": model_spec, "base": base,
              "num_scalars": total, "entries": entries, **(extra or {})})
  return total


def apply_adapter(base_params: dict, adapter_dir: str) -> dict:
  """Returns `base_params` with the stored trained values written in."""
  meta = read_adapter_json(adapter_dir)
  arrays = load_npz(os.path.join(adapter_dir, "adapter.npz"))
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
  """Rebuilds (model, params) of a fine-tuned run from its adapter and base checkpoint."""
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
  return model, apply_adapter(params, adapter_dir)


def merged_vit_arrays(params: dict, *, lora_scale: Optional[float] = None
                      ) -> dict[str, np.ndarray]:
  """vit_jax on-disk arrays from a ViT parameter tree, LoRA folded into the kernels."""
  flat = {k: np.asarray(v, np.float32) for k, v in partition.flatten(params).items()}
  if any(p.startswith(("adapter", "vpt_")) for k in flat for p in k.split("/")):
    raise ConfigError("export_merged works for heat, linear, full, bitfit and lora; "
                      "adapters and prompts cannot be folded into a plain ViT")
  for key in [k for k in flat if "/lora_" in k and k.endswith("/a")]:
    if lora_scale is None:
      raise ValueError("merging LoRA needs lora_scale = alpha / rank")
    module, name = key[:-len("/a")].rsplit("/", 1)       # .../lora_query
    delta = np.tensordot(flat[key], flat[key[:-1] + "b"], axes=(1, 0)) * lora_scale
    flat[f"{module}/{name[len('lora_'):]}/kernel"] += delta.astype(np.float32)
  out = {}
  for key, value in flat.items():
    if "/lora_" in key:
      continue
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = LINEN_TO_PRE_LINEN.get(parts[2], parts[2])
    out["/".join(parts)] = value
  return out


def export_merged(path: str, params: dict, *, lora_scale: Optional[float] = None) -> None:
  """Writes `merged.npz` (vit_jax layout) atomically."""
  write_npz(path, merged_vit_arrays(params, lora_scale=lora_scale))
