"""What a user carries away from a run.

* `adapter.npz` + `adapter.json`: only what was trained. Whole trainable leaves are
  stored as they are; element-masked leaves (HEAT's head slices) store just the
  selected elements, in row-major order, with the small mask in the JSON. The number
  of stored scalars equals the reported trainable-parameter count. Model state (e.g.
  batch statistics) is stored beside them under `model_state/<collection>/...` and
  counted separately (`num_state_scalars`).
* `adapter_config.json` + `adapter_model.safetensors`: the same arrays and entries in
  the spirit of Hugging Face peft (no pickle, no numpy needed to list the tensors):
  the base model's name and sha256, the method, its options and state (e.g. the HEAT
  head selection), the trained modules, the model spec, the task with its class names,
  the preprocessing and the library version.
* `load_adapter(path, base=...)` rebuilds the fine-tuned model and its variables in one
  call from either pair, on the base checkpoint it names (or `base`), after checking
  the base's sha256 (`check_base=False` skips the check).
* `merged.npz` (ViT) / `merged.safetensors` (Swin): the full fine-tuned model,
  mergeable extensions folded into the plain weights by their own `merge`, in the
  family's public layout (the exporter its checkpoint module registers): the vit_jax
  `.npz` that timm's `_load_weights`, big_vision and heat_jax read, or timm's Swin
  state dict that `SwinTransformer.load_state_dict` and heat_jax read.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from heat_jax.errors import CheckpointError, ConfigError
from heat_jax.io_utils import (as_path, atomic_open, load_npz, read_json, sha256_file,
                               write_json, write_npz)
from heat_jax.training import partition

ADAPTER_FORMAT = "heat_jax.adapter.v1"
PEFT_FORMAT = "heat_jax.peft_style.v1"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
STATE_PREFIX = "model_state/"


def _adapter_arrays(params: dict, mask: partition.FlatMask, model_state: Optional[dict]
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(arrays to store, the JSON fields that describe them)."""
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
  return arrays, {"num_scalars": total, "entries": entries,
                  "num_state_scalars": state_total, "model_state": state_entries}


def export_adapter(workdir: str, params: dict, mask: partition.FlatMask, *,
                   model_spec: dict, base: dict, model_state: Optional[dict] = None,
                   extra: Optional[dict] = None) -> int:
  """Writes both adapter pairs; returns the number of stored trainable scalars.

  `extra` (the method, its options and state, the task, the preprocessing) goes into
  both JSON files.
  """
  arrays, fields = _adapter_arrays(params, mask, model_state)
  extra = dict(extra or {})
  write_npz(os.path.join(workdir, "adapter.npz"), arrays)
  write_json(os.path.join(workdir, "adapter.json"),
             {"format": ADAPTER_FORMAT, "model": model_spec, "base": base, **fields,
              **extra})
  write_peft_style(workdir, arrays, fields, model_spec=model_spec, base=base, extra=extra)
  return fields["num_scalars"]


def write_peft_style(workdir: str, arrays: dict[str, np.ndarray], fields: dict, *,
                     model_spec: dict, base: dict, extra: dict) -> None:
  """adapter_config.json + adapter_model.safetensors (see the module docstring)."""
  from safetensors.numpy import save

  from heat_jax import __version__
  modules = sorted({k.rsplit("/", 1)[0] for k in fields["entries"]})
  config = {
      "format": PEFT_FORMAT, "library": "heat_jax", "library_version": __version__,
      "base_model_name_or_path": base.get("checkpoint"),
      "base_model_sha256": base.get("sha256"), "base_model": base,
      "task_type": "IMAGE_CLASSIFICATION", "num_classes": model_spec["num_classes"],
      **extra,
      # peft's names: the adapted modules, and the fully trained ones (the classifier)
      "target_modules": [m for m in modules if not partition.is_head(m)],
      "modules_to_save": [m for m in modules if partition.is_head(m)],
      "extensions": model_spec.get("extensions", []),
      "model": model_spec, **fields,
  }
  tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  with atomic_open(os.path.join(workdir, PEFT_WEIGHTS), "wb") as f:
    f.write(save(tensors, metadata={"format": PEFT_FORMAT}))
  write_json(os.path.join(workdir, PEFT_CONFIG), config)


def read_adapter(path: str) -> tuple[dict, dict[str, np.ndarray], str]:
  """(meta, arrays, where) of the adapter in `path`: a run's workdir or either JSON file.

  The peft-style pair is read when present, else adapter.json / adapter.npz.
  """
  path = os.fspath(path)
  folder = path
  if as_path(path).is_file():
    folder = os.path.dirname(path) or "."
    if os.path.basename(path) not in (PEFT_CONFIG, "adapter.json"):
      raise CheckpointError(f"{path} is not an adapter file; pass a run's workdir, its "
                            f"{PEFT_CONFIG} or its adapter.json")
  prefer_old = os.path.basename(path) == "adapter.json"
  peft = os.path.join(folder, PEFT_CONFIG)
  if as_path(peft).exists() and not prefer_old:
    meta = _read_json(peft, PEFT_FORMAT)
    from safetensors.numpy import load
    weights = os.path.join(folder, PEFT_WEIGHTS)
    try:
      arrays = dict(load(as_path(weights).read_bytes()))
    except FileNotFoundError:
      raise CheckpointError(f"{folder} has {PEFT_CONFIG} but no {PEFT_WEIGHTS}; copy both "
                            "files") from None
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f"cannot read {weights} ({e})") from None
    return meta, arrays, peft
  old = os.path.join(folder, "adapter.json")
  if not as_path(old).exists():
    raise CheckpointError(f"no {PEFT_CONFIG} or adapter.json in {folder}; pass the "
                          "workdir of a finished run")
  return _read_json(old, ADAPTER_FORMAT), load_npz(os.path.join(folder, "adapter.npz")), old


def _read_json(path: str, fmt: str) -> dict:
  try:
    meta = read_json(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {path} ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != fmt:
    raise CheckpointError(f"{path} is not a {fmt} file")
  return meta


def read_adapter_json(adapter_dir: str) -> dict:
  """The adapter's metadata (either JSON file; see `read_adapter`)."""
  return read_adapter(adapter_dir)[0]


def apply_adapter(base_params: dict, adapter_dir: str) -> dict:
  """Returns `base_params` with the stored trained values written in."""
  meta, arrays, _ = read_adapter(adapter_dir)
  return _apply_entries(base_params, meta, arrays)


def _model_state(meta: dict, arrays: dict, like: dict, where: str) -> dict:
  """The stored model state (e.g. batch statistics), checked against `like`."""
  stored = {k: arrays[STATE_PREFIX + k] for k in meta.get("model_state", {})}
  expected = {k: np.shape(v) for k, v in partition.flatten(like).items()}
  if set(stored) != set(expected) or any(np.shape(stored[k]) != expected[k] for k in stored):
    raise CheckpointError(f"{where}: the stored model state does not match the "
                          "model's (build the model with the adapter's model spec)")
  return partition.unflatten(stored) if stored else {}


def adapter_model_state(adapter_dir: str, like: dict) -> dict:
  """The stored model state (e.g. batch statistics), checked against `like`."""
  meta, arrays, where = read_adapter(adapter_dir)
  return _model_state(meta, arrays, like, where)


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


def verify_base(meta: dict, base_path: Optional[str], where: str) -> None:
  """CheckpointError unless `base_path` is the base the adapter was trained on."""
  recorded = meta.get("base", meta.get("base_model", {})) or {}
  want = recorded.get("sha256")
  hint = ("pass the base it was trained on, or check_base=False (predict: --nocheck_base) "
          "to load it anyway")
  if base_path is None:
    return
  if not want:
    raise CheckpointError(f"{where} was trained on a random initialisation (seed "
                          f"{recorded.get('init_seed')}), not on a checkpoint such as "
                          f"{base_path}; load it without a base, or check_base=False")
  got = sha256_file(base_path)
  if got != want:
    raise CheckpointError(f"base checkpoint {base_path} has sha256 {got[:16]}..., but "
                          f"{where} was trained on {recorded.get('file') or 'another file'} "
                          f"with sha256 {want[:16]}...; {hint}")


def load_adapter(path: str, *, base: Optional[str] = None, check_base: bool = True
                 ) -> tuple[Any, dict]:
  """Rebuilds (model, variables) of a fine-tuned run in one call.

  Args:
    path: the run's workdir (or its adapter_config.json / adapter.json).
    base: the base checkpoint (registered name, URL or file); default: the one the
      adapter names. A random-init run rebuilds its init from the recorded seed.
    check_base: compare the base file's sha256 with the recorded one first.

  Returns:
    `(model, variables)`: `model.apply(variables, images)` gives the fine-tuned model's
    logits; `variables` is {'params': ..., plus any model state such as 'batch_stats'}.
  """
  from heat_jax import checkpoints, model_spec as spec_lib
  meta, arrays, where = read_adapter(path)
  recorded = meta.get("base", meta.get("base_model", {})) or {}
  model = spec_lib.model_from_spec(meta["model"])
  name = base or recorded.get("checkpoint")
  rng = jax.random.key(recorded.get("init_seed", 0))
  if name:
    base_path = str(checkpoints.resolve_checkpoint(name))
    if check_base:
      verify_base(meta, base_path, where)
    params = checkpoints.load_pretrained(base_path, model, rng=rng,
                                         interpolation=recorded.get("interpolation", "zoom"))
  else:
    params = checkpoints.init_params(model, rng=rng)
  state = _model_state(meta, arrays, checkpoints.init_model_state(model, rng=rng), where)
  return model, {"params": _apply_entries(params, meta, arrays), **state}


def merge_extensions(model: Any, params: dict) -> tuple[Any, dict]:
  """(plain model, plain params): every extension folded in by its own `merge`."""
  for ext in reversed(getattr(model, "extensions", ())):
    if not ext.mergeable:
      raise ConfigError(f"extension {ext.kind!r} cannot be folded into a plain "
                        "checkpoint; export the adapter instead (export_merged=False)")
    params = ext.merge(params)
  return model.clone(extensions=()), params


def merged_filename(family: str) -> str:
  """`merged.npz`, `merged.safetensors`, ...: the merged file of a model family."""
  from heat_jax import checkpoints
  return checkpoints.exporter(family).filename


def export_merged(path: str, model: Any, params: dict) -> None:
  """Writes the model with its extensions merged, in its family's public layout."""
  from heat_jax import checkpoints
  family = getattr(model, "checkpoint_format", "") or getattr(model, "family", "vit")
  exporter = checkpoints.exporter(family)
  if os.path.splitext(str(path))[1] != os.path.splitext(exporter.filename)[1]:
    raise ValueError(f"a merged {family} checkpoint is a {exporter.layout} file; name it "
                     f"*{os.path.splitext(exporter.filename)[1]}, not {path}")
  _, plain = merge_extensions(model, params)
  exporter.write(path, partition.flatten(plain))
