"""Pretrained checkpoints: `load_pretrained(name_or_path, model, ...) -> params`.

Names come from `heat_jax.checkpoints.registry`; files are downloaded into
`$HEAT_JAX_CACHE/checkpoints` (default `~/.cache/heat_jax/checkpoints`) and reused.
Each format module (`vit_npz`, `timm_vit`, `hf_vit`, `swin_timm`; every module here
but the infrastructure, imported below) registers, in `formats`, a converter from its files to canonical parameter names for the model
families it serves; the common code here merges the converted arrays into a freshly
initialised parameter tree and reports every mismatch in one error. The way back,
plain parameters -> the family's public file format (`merged.npz` in the vit_jax
layout, `merged.safetensors` in timm's layout), is the family's exporter.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import re
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from heat_jax import resize
from heat_jax.checkpoints.download import download, fetch_registered, hub_download
from heat_jax.checkpoints.formats import (Exporter, converter, exporter, interpolations,
                                          model_format, register_converter,
                                          register_exporter)
from heat_jax.checkpoints.registry import (CheckpointInfo, available_checkpoints,
                                           get_checkpoint, register_checkpoint)
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import cache_dir, sha256_file

# Every other module of this package is a format module: importing it registers its
# converter, exporter and checkpoint names (adding a format is adding one file).
_INFRASTRUCTURE = ("download", "formats", "registry", "state_dict")
for _module in pkgutil.iter_modules(__path__):
  if _module.name not in _INFRASTRUCTURE:
    importlib.import_module(f"{__name__}.{_module.name}")

Params = dict[str, Any]
POSEMB_INTERPOLATIONS = ("auto",) + resize.METHODS
HF_HUB = "hf-hub:"

__all__ = ["CheckpointInfo", "Exporter", "auto_value_range", "available_checkpoints",
           "exporter", "get_checkpoint", "init_model_state", "init_params",
           "interpolations", "load_pretrained", "model_format", "register_checkpoint",
           "register_converter", "register_exporter", "resolve_checkpoint", "sha256_file",
           "value_range_of"]


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
  """Local path of a checkpoint: an existing file, a URL, a registered name, or
  `hf-hub:<owner>/<repo>[@revision]` (its `model.safetensors`: timm's
  `hf-hub:timm/<arch>.<tag>`, or a transformers ViT / Dinov2 repository).

  Registered names, Hub files and URLs are downloaded into the cache once and reused.
  """
  text = str(name_or_path)
  if not text:
    raise CheckpointError("no checkpoint given; set config.model.pretrained to a "
                          f"registered name ({', '.join(available_checkpoints()[:4])}, ...) "
                          "or a local file")
  if os.path.isfile(text):
    return Path(text)
  if text.startswith("gs://"):
    text = "https://storage.googleapis.com/" + text[len("gs://"):]
  if re.match(r"https?://", text):
    return download(text, cache_dir("checkpoints", "urls") / text.rsplit("/", 1)[-1])
  info = get_checkpoint(text)
  if info is None and text.startswith(HF_HUB):
    return hub_file(text)
  if info is None:
    if os.sep in text or text.endswith((".npz", ".safetensors", ".pth", ".bin", ".onnx")):
      raise CheckpointError(f"checkpoint file not found: {text}; pass an existing file or "
                            "a registered name")
    raise CheckpointError(f"unknown checkpoint {text!r}; pass a local file, a URL, or one "
                          f"of: {', '.join(available_checkpoints())}")
  return fetch_registered(info)


def hub_file(name: str, filename: str = "model.safetensors") -> Path:
  """The local copy of `filename` of `hf-hub:<owner>/<repo>[@revision]` (downloaded once
  into the shared Hugging Face cache)."""
  repo, _, revision = name[len(HF_HUB):].partition("@")
  if repo.count("/") != 1 or not all(repo.split("/")):
    raise CheckpointError(f"{name!r}: write a Hub checkpoint as hf-hub:<owner>/<repo>, "
                          "e.g. hf-hub:timm/vit_small_patch14_dinov2.lvd142m")
  return hub_download(repo, filename, revision=revision or "main",
                      by_hand=cache_dir("checkpoints", "hf-hub", *repo.split("/")) / filename)


def image_hw(model: nn.Module, image_size: Optional[int | tuple[int, int]] = None
             ) -> tuple[int, int]:
  size = image_size if image_size is not None else model.image_size
  if isinstance(size, int):
    return (size, size)
  return (int(size[0]), int(size[1]))


def init_params(model: nn.Module, *, image_size: Optional[int | tuple[int, int]] = None,
                rng: Optional[jax.Array] = None) -> Params:
  """Randomly initialised parameters (jitted init) for the model at `image_size`."""
  h, w = image_hw(model, image_size)
  rng = jax.random.key(0) if rng is None else rng
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, dummy))(rng)
  return jax.device_get(variables["params"])


def init_model_state(model: nn.Module, *,
                     image_size: Optional[int | tuple[int, int]] = None,
                     rng: Optional[jax.Array] = None) -> dict[str, Any]:
  """The model's initial non-parameter collections (e.g. `batch_stats`); {} for most.

  Only the state is returned from the jitted init, so XLA drops the parameter init.
  """
  hw = image_hw(model, image_size)
  rng = jax.random.key(0) if rng is None else rng
  return jax.device_get(_per_model(_init_state_cached, _init_state, model)(model, hw, rng))


def _init_state(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> dict[str, Any]:
  variables = model.init(rng, jnp.zeros((1, *hw, 3), jnp.float32))
  return {k: v for k, v in variables.items() if k != "params"}


_init_state_cached = jax.jit(_init_state, static_argnums=(0, 1))


def fresh_names(model: nn.Module) -> frozenset[str]:
  """Subtree names never taken from a pretrained file: the head and extensions' own."""
  names = {"head"}
  for ext in getattr(model, "extensions", ()):
    names.update(ext.param_names)
  return frozenset(names)


def is_fresh_param(name: str, names: frozenset[str]) -> bool:
  """Whether parameter `name` ('/'-joined path) lies in a fresh subtree (`fresh_names`)."""
  parts = name.split("/")
  return parts[0] == "head" or any(p in names for p in parts)


def load_pretrained(name_or_path: str | os.PathLike, model: nn.Module, *,
                    image_size: Optional[int | tuple[int, int]] = None,
                    rng: Optional[jax.Array] = None,
                    interpolation: str = "auto", keep_head: bool = True) -> Params:
  """Loads pretrained weights into a fresh parameter tree of `model`.

  Args:
    name_or_path: a registered name (see `available_checkpoints()`), URL or local file.
    model: a module from `heat_jax.models.create_model`.
    image_size: size the model will run at (default `model.image_size`); position
      embeddings are resized to its grid.
    rng: initialises the head (when not kept) and any PETL extension parameters.
    interpolation: posemb resize method (`POSEMB_INTERPOLATIONS`): `auto` resizes
      as the file's own framework does (vit_jax / big_vision `.npz`: `zoom`; timm:
      `bicubic_aa`; Hugging Face: `bicubic`); or one of `heat_jax.resize.METHODS`.
    keep_head: take the file's classifier when it has the model's shape (a merged
      export of a run loads as that run's model); a head of another class count is
      initialised afresh, with a log line. False: always a fresh head (training runs).

  Returns:
    The parameter tree. Extension parameters (and the head, unless kept) come from
    the fresh init; every other parameter comes from the file, or a `CheckpointError`
    lists every missing, unexpected and wrong-shaped key.
  """
  path = resolve_checkpoint(name_or_path)
  convert = converter(model_format(model))
  hw = image_hw(model, image_size)
  return load_converted(
      lambda template: convert(path, template=template, model=model, image_hw=hw,
                               interpolation=interpolation),
      model, image_size=image_size, rng=rng, source=str(path), keep_head=keep_head)


def load_converted(convert: Callable[[dict], tuple[dict, dict]], model: nn.Module, *,
                   image_size: Optional[int | tuple[int, int]] = None,
                   rng: Optional[jax.Array] = None, source: str,
                   keep_head: bool = False) -> Params:
  """The parameter tree from `convert(template shapes) -> (canonical arrays, facts)`:
  fresh head and extensions, every other parameter from the arrays (one error listing
  every mismatch otherwise). In-memory sources (`hf_vit.params_from_hf`) use it too."""
  flat_fresh = _fresh_template(model, image_size=image_size, rng=rng)
  template = {k: tuple(v.shape) for k, v in flat_fresh.items()}
  loaded, _ = convert(template)
  merged = merge_into_template(loaded, flat_fresh, source=source, fresh=fresh_names(model),
                               keep_head=keep_head)
  return traverse_util.unflatten_dict(merged, sep="/")


def _fresh_template(model: nn.Module, *, image_size: Optional[int | tuple[int, int]],
                    rng: Optional[jax.Array]) -> dict[str, Any]:
  """Flat parameter template: values for fresh parameters, shapes for the rest.

  Only the head and extension parameters are initialised (the same values as
  `init_params` gives them); the rest is shape-only, so loading never pays for a
  random init of the whole backbone.
  """
  hw = image_hw(model, image_size)
  rng = jax.random.key(0) if rng is None else rng
  shapes = jax.eval_shape(functools.partial(_init_flat, model, hw), rng)
  values = jax.device_get(_per_model(_init_fresh_cached, _init_fresh, model)(model, hw, rng))
  return {k: values[k] if k in values else shapes[k] for k in shapes}


def _init_flat(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> dict[str, Any]:
  params = model.init(rng, jnp.zeros((1, *hw, 3), jnp.float32))["params"]
  return traverse_util.flatten_dict(params, sep="/")


def _init_fresh(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> dict[str, Any]:
  names = fresh_names(model)
  return {k: v for k, v in _init_flat(model, hw, rng).items() if is_fresh_param(k, names)}


_init_fresh_cached = jax.jit(_init_fresh, static_argnums=(0, 1))


def _per_model(cached: Callable, fn: Callable, model: nn.Module) -> Callable:
  """`cached` (a module-level jit of `fn` with the model and size static: compiled once
  per (model, size)) when the model hashes, else a fresh jit of `fn`."""
  try:
    hash(model)
  except TypeError:
    return jax.jit(fn, static_argnums=(0, 1))
  return cached


def _file_head(loaded: dict[str, np.ndarray], template: dict[str, Any],
               source: str) -> dict[str, np.ndarray]:
  """The file's `head/*` arrays when they have the model's shapes, else {} (logged)."""
  keys = [k for k in template if k.split("/")[0] == "head"]
  if not keys or not all(k in loaded for k in keys):
    return {}
  if all(np.shape(loaded[k]) == tuple(template[k].shape) for k in keys):
    return {k: np.asarray(loaded[k]).astype(template[k].dtype) for k in keys}
  from absl import logging
  have = np.shape(loaded.get("head/bias", ()))
  want = tuple(template["head/bias"].shape) if "head/bias" in template else ()
  if have == want and "head/kernel" in template:   # same classes, other input features
    logging.info(f"{source}: its classifier reads {np.shape(loaded['head/kernel'])[0]} "
                 f"features, the model's {template['head/kernel'].shape[0]}; the head is "
                 "initialised afresh")
    return {}
  logging.info(f"{source}: its classifier ({have[0] if have else '?'} classes) does not "
               f"fit the model's {want[0] if want else '?'} classes; the head is "
               "initialised afresh")
  return {}


def merge_into_template(loaded: dict[str, np.ndarray], template: dict[str, Any], *,
                        source: str, fresh: frozenset[str] = frozenset(),
                        keep_head: bool = False) -> dict[str, Any]:
  """Takes every non-fresh parameter from `loaded`; raises one error on any mismatch.

  `template` holds values for fresh parameters (subtrees named in `fresh` and the
  head) and shapes for the rest. `keep_head`: the file's head where its shapes fit.
  """
  missing, wrong, merged = [], [], {}
  if keep_head:
    merged.update(_file_head(loaded, template, source))
  for key, value in template.items():
    if is_fresh_param(key, fresh):
      merged.setdefault(key, value)
      continue
    if key not in loaded:
      missing.append(key)
      continue
    arr = np.asarray(loaded[key])
    if arr.shape != tuple(value.shape):
      wrong.append(f"{key} file {arr.shape} vs model {tuple(value.shape)}")
      continue
    merged[key] = arr.astype(value.dtype)
  extra = sorted(k for k in loaded if k not in template and not is_fresh_param(k, fresh))
  if missing or extra or wrong:
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra),
                         ("wrong shape", wrong)):
      if items:
        shown = "; ".join(items[:6]) + (f"; ... ({len(items) - 6} more)"
                                          if len(items) > 6 else "")
        parts.append(f"{len(items)} {label}: {shown}")
    raise CheckpointError(f"checkpoint {source} does not match the model: "
                          + " | ".join(parts)
                          + " (check the model name, classifier and representation_size)")
  return merged


def value_range_of(name_or_path: str | os.PathLike) -> Optional[str]:
  """The normalisation a checkpoint was trained with, from its own metadata, or None.

  A registered name carries it (timm's `pretrained_cfg` of the tag); a local file
  is read for a `config.json` beside it (timm Hub layout: `pretrained_cfg.mean/std`)
  or a `preprocessor_config.json` (transformers: `image_mean/std`). Nothing is
  downloaded; mean/std that match no named value range give None.
  """
  from heat_jax.data.preprocess import value_range_of as named
  text = str(name_or_path or "")
  info = get_checkpoint(text) if text else None
  if info is not None:
    return info.value_range or None
  if not text or not os.path.isfile(text):
    return None
  folder = Path(text).parent
  for filename, keys in (("config.json", ("mean", "std")),
                         ("preprocessor_config.json", ("image_mean", "image_std"))):
    meta = folder / filename
    if not meta.is_file():
      continue
    try:
      data = json.loads(meta.read_text())
    except (OSError, ValueError):
      continue
    cfg = data.get("pretrained_cfg", data) if isinstance(data, dict) else {}
    if isinstance(cfg, dict) and all(k in cfg for k in keys):
      return named(cfg[keys[0]], cfg[keys[1]])
  return None


def auto_value_range(model_name: str, pretrained: str = "") -> str:
  """What `config.data.value_range='auto'` means: the checkpoint's own normalisation
  where its metadata says (`value_range_of`), else the model's registered one."""
  from heat_jax.models import model_info
  return value_range_of(pretrained) or model_info(model_name).value_range


def provenance(name_or_path: str | os.PathLike) -> dict[str, Any]:
  """What a checkpoint argument names, for results.json (beside its file and sha256):
  `name` (the registered name, or the `hf-hub:` / URL / path given), `tag` (timm's
  pretrained tag, e.g. `lvd142m`), `hf_repo`, `source` (where the file comes from)
  and `value_range` (its own normalisation, when its metadata says)."""
  text = str(name_or_path)
  info = get_checkpoint(text)
  repo = info.hf_repo if info is not None else ""
  if info is None and text.startswith(HF_HUB):
    repo = text[len(HF_HUB):].partition("@")[0]
  arch_tag = (info.name if info is not None else repo).rpartition("/")[2]
  tag = arch_tag.partition(".")[2] if repo.startswith("timm/") or (
      info is not None and info.name.startswith("timm/")) else ""
  source = ("Hugging Face Hub" if repo else "URL" if re.match(r"(https?|gs)://", text)
            else "registered URL" if info is not None else "local file")
  return {"name": info.name if info is not None else text, "tag": tag or None,
          "hf_repo": repo or None, "source": source, "value_range": value_range_of(text)}
