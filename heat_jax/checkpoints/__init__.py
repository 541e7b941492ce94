"""Pretrained checkpoints: `load_pretrained(name_or_path, model, ...) -> params`.

Names come from `heat_jax.checkpoints.registry`; files are downloaded into
`$HEAT_JAX_CACHE/checkpoints` (default `~/.cache/heat_jax/checkpoints`) and reused.
Each format module (`vit_npz`, `timm_vit`, `hf_vit`, `swin_timm`) registers, in
`formats`, a converter from its files to canonical parameter names for the model
families it serves; the common code here merges the converted arrays into a freshly
initialised parameter tree and reports every mismatch in one error. The way back,
plain parameters -> the family's public file format (`merged.npz` in the vit_jax
layout, `merged.safetensors` in timm's layout), is the family's exporter.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from heat_jax import resize
# The format modules register their converters, exporters and checkpoint names.
from heat_jax.checkpoints import hf_vit, onnx_vit, swin_timm, timm_vit, vit_npz  # noqa: F401
from heat_jax.checkpoints.download import download, fetch_registered
from heat_jax.checkpoints.formats import (Exporter, converter, exporter, model_format,
                                          register_converter, register_exporter)
from heat_jax.checkpoints.registry import (CheckpointInfo, available_checkpoints,
                                           get_checkpoint, register_checkpoint)
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import cache_dir, sha256_file

Params = dict[str, Any]
POSEMB_INTERPOLATIONS = ("auto",) + resize.METHODS

__all__ = ["CheckpointInfo", "Exporter", "available_checkpoints", "exporter",
           "get_checkpoint", "init_model_state", "init_params", "load_pretrained",
           "model_format", "register_checkpoint", "register_converter",
           "register_exporter", "resolve_checkpoint", "sha256_file"]


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
  """Local path of a checkpoint: an existing file, a URL, or a registered name.

  Registered names and URLs are downloaded into the cache once and reused.
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
  if info is None:
    if os.sep in text or text.endswith((".npz", ".safetensors", ".pth", ".bin", ".onnx")):
      raise CheckpointError(f"checkpoint file not found: {text}; pass an existing file or "
                            "a registered name")
    raise CheckpointError(f"unknown checkpoint {text!r}; pass a local file, a URL, or one "
                          f"of: {', '.join(available_checkpoints())}")
  return fetch_registered(info)


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
  h, w = image_hw(model, image_size)
  rng = jax.random.key(0) if rng is None else rng
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  state = jax.jit(lambda r: {k: v for k, v in model.init(r, dummy).items()
                             if k != "params"})(rng)
  return jax.device_get(state)


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
                    interpolation: str = "auto") -> Params:
  """Loads pretrained weights into a fresh parameter tree of `model`.

  Args:
    name_or_path: a registered name (see `available_checkpoints()`), URL or local file.
    model: a module from `heat_jax.models.create_model`.
    image_size: size the model will run at (default `model.image_size`); position
      embeddings are resized to its grid.
    rng: initialises the head and any PETL extension parameters.
    interpolation: posemb resize method (`POSEMB_INTERPOLATIONS`): `auto` resizes
      as the file's own framework does (vit_jax / big_vision `.npz`: `zoom`; timm:
      `bicubic_aa`; Hugging Face: `bicubic`); or one of `heat_jax.resize.METHODS`.

  Returns:
    The parameter tree. `head` and extension parameters come from the fresh init;
    every other parameter comes from the file, or a `CheckpointError` lists every
    missing, unexpected and wrong-shaped key.
  """
  path = resolve_checkpoint(name_or_path)
  convert = converter(model_format(model))
  hw = image_hw(model, image_size)
  return load_converted(
      lambda template: convert(path, template=template, model=model, image_hw=hw,
                               interpolation=interpolation),
      model, image_size=image_size, rng=rng, source=str(path))


def load_converted(convert: Callable[[dict], tuple[dict, dict]], model: nn.Module, *,
                   image_size: Optional[int | tuple[int, int]] = None,
                   rng: Optional[jax.Array] = None, source: str) -> Params:
  """The parameter tree from `convert(template shapes) -> (canonical arrays, facts)`:
  fresh head and extensions, every other parameter from the arrays (one error listing
  every mismatch otherwise). In-memory sources (`hf_vit.params_from_hf`) use it too."""
  flat_fresh = _fresh_template(model, image_size=image_size, rng=rng)
  template = {k: tuple(v.shape) for k, v in flat_fresh.items()}
  loaded, _ = convert(template)
  merged = merge_into_template(loaded, flat_fresh, source=source, fresh=fresh_names(model))
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
  try:
    hash(model)
    init_fresh = _init_fresh_cached  # compiled once per (model, size)
  except TypeError:
    init_fresh = jax.jit(_init_fresh, static_argnums=(0, 1))
  values = jax.device_get(init_fresh(model, hw, rng))
  return {k: values[k] if k in values else shapes[k] for k in shapes}


def _init_flat(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> dict[str, Any]:
  params = model.init(rng, jnp.zeros((1, *hw, 3), jnp.float32))["params"]
  return traverse_util.flatten_dict(params, sep="/")


def _init_fresh(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> dict[str, Any]:
  names = fresh_names(model)
  return {k: v for k, v in _init_flat(model, hw, rng).items() if is_fresh_param(k, names)}


_init_fresh_cached = jax.jit(_init_fresh, static_argnums=(0, 1))


def merge_into_template(loaded: dict[str, np.ndarray], template: dict[str, Any], *,
                        source: str, fresh: frozenset[str] = frozenset()) -> dict[str, Any]:
  """Takes every non-fresh parameter from `loaded`; raises one error on any mismatch.

  `template` holds values for fresh parameters (subtrees named in `fresh` and the
  head) and shapes for the rest.
  """
  missing, wrong, merged = [], [], {}
  for key, value in template.items():
    if is_fresh_param(key, fresh):
      merged[key] = value
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
