"""Pretrained checkpoints: `load_pretrained(name_or_path, model, ...) -> params`.

Names come from `heat_jax.checkpoints.registry`; files are downloaded into
`$HEAT_JAX_CACHE/checkpoints` (default `~/.cache/heat_jax/checkpoints`) and reused.
Each model family registers a converter from its file format to canonical parameter
names (`register_converter`); the common code here merges the converted arrays into a
freshly initialised parameter tree and reports every mismatch in one error. The way
back, plain parameters -> the family's public file format (`merged.npz` in the
vit_jax layout, `merged.safetensors` in timm's Swin layout), is an exporter
(`register_exporter`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from heat_jax.checkpoints import vit_npz
from heat_jax.checkpoints.download import download, fetch_registered
from heat_jax.checkpoints.registry import (CheckpointInfo, available_checkpoints,
                                           get_checkpoint, register_checkpoint)
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import cache_dir, load_npz, sha256_file, write_npz

Params = dict[str, Any]
# family -> fn(path, template_shapes, model, image_hw, interpolation) -> (flat arrays, facts)
_CONVERTERS: dict[str, Callable[..., tuple[dict[str, np.ndarray], dict]]] = {}

__all__ = ["CheckpointInfo", "Exporter", "available_checkpoints", "exporter",
           "get_checkpoint", "init_model_state", "init_params", "load_pretrained",
           "register_checkpoint", "register_converter", "register_exporter",
           "resolve_checkpoint", "sha256_file"]


def register_converter(family: str, fn: Callable[..., tuple[dict, dict]]) -> None:
  """Registers the file -> canonical-arrays converter of a model family."""
  _CONVERTERS[family] = fn


@dataclasses.dataclass(frozen=True)
class Exporter:
  """How a family's plain parameters become a file other libraries load.

  `write(path, flat_params)` takes '/'-joined canonical names (extensions merged, the
  classifier included); `filename` is the name a run gives the file in its workdir.
  """

  filename: str
  write: Callable[[Any, dict[str, np.ndarray]], None]
  layout: str   # what reads it, for messages and the README


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(family: str, exporter_: Exporter) -> None:
  """Registers the canonical-params -> file exporter of a model family."""
  _EXPORTERS[family] = exporter_


def exporter(family: str) -> Exporter:
  if family not in _EXPORTERS:
    raise CheckpointError(f"no merged-checkpoint exporter for model family {family!r}")
  return _EXPORTERS[family]


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
    if os.sep in text or text.endswith((".npz", ".safetensors", ".pth", ".bin")):
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
                    interpolation: str = "zoom", keep_head: bool = True) -> Params:
  """Loads pretrained weights into a fresh parameter tree of `model`.

  Args:
    name_or_path: a registered name (see `available_checkpoints()`), URL or local file.
    model: a module from `heat_jax.models.create_model`.
    image_size: size the model will run at (default `model.image_size`); position
      embeddings are resized to its grid.
    rng: initialises the head (when not kept) and any PETL extension parameters.
    interpolation: posemb resize method: `zoom` (vit_jax, big_vision) or `bilinear`
      (timm).

    keep_head: take the file's classifier when it has the model's shape (a merged
      export of a run loads as that run's model); a head of another class count is
      initialised afresh, with a log line. False: always a fresh head (training runs).

  Returns:
    The parameter tree. Extension parameters (and the head, unless kept) come from
    the fresh init; every other parameter comes from the file, or a `CheckpointError`
    lists every missing, unexpected and wrong-shaped key.
  """
  path = resolve_checkpoint(name_or_path)
  family = getattr(model, "family", "vit")
  if family not in _CONVERTERS:
    raise CheckpointError(f"no checkpoint converter for model family {family!r}")
  flat_fresh = _fresh_template(model, image_size=image_size, rng=rng)
  template = {k: tuple(v.shape) for k, v in flat_fresh.items()}
  loaded, _ = _CONVERTERS[family](path, template=template, model=model,
                                  image_hw=image_hw(model, image_size),
                                  interpolation=interpolation)
  merged = merge_into_template(loaded, flat_fresh, source=str(path),
                               fresh=fresh_names(model), keep_head=keep_head)
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


def _convert_vit(path: Path, *, template: dict, model: nn.Module,
                 image_hw: tuple[int, int], interpolation: str) -> tuple[dict, dict]:
  if path.suffix != ".npz":
    raise CheckpointError(f"{path}: ViT checkpoints must be .npz files (vit_jax or "
                          "big_vision layout)")
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path} is not an .npz (zip) archive; delete it if it is a "
                          "partial download and try again")
  try:
    arrays = load_npz(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise CheckpointError(f"cannot read {path} as .npz ({e}); delete it if it is a "
                          "partial download and try again") from None
  p = model.patch_size
  return vit_npz.convert(arrays, template, grid_hw=(image_hw[0] // p, image_hw[1] // p),
                         interpolation=interpolation)


register_converter("vit", _convert_vit)
register_exporter("vit", Exporter(
    "merged.npz", lambda path, params: write_npz(path, vit_npz.to_vit_jax(params)),
    "vit_jax .npz (timm `_load_weights`, big_vision, heat_jax)"))
from heat_jax.checkpoints import swin_timm  # noqa: E402,F401
