"""Shared config pieces: the base config every job starts from, and arg parsing.

Configs are code (big_vision style): `get_config(arg)` builds a ConfigDict from the
base and the `:arg` string, e.g. `configs/vtab.py:dtd,method=lora,rank=8`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from heat_jax.errors import ConfigError
from heat_jax.evaluation import default_evals
from heat_jax.methods import method_config_blocks
from heat_jax.segmentation.head import default_config as seg_config


def base_config() -> ml_collections.ConfigDict:
  """Every field any job reads, with the PETL-paper defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 42
  c.recipe = "project"                  # project | released (configs/vtab.py, configs/recipes)

  c.model = ml_collections.ConfigDict()
  c.model.name = "ViT-B_16"
  c.model.pretrained = "ViT-B_16"       # registered name, URL or path; '' = random init
  c.model.image_size = 224
  c.model.drop_path_rate = 0.1
  c.model.classifier = "token"
  # auto: as the file's framework does (vit_jax npz: zoom; timm: bicubic_aa; HF: bicubic)
  c.model.posemb_interpolation = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"                # tfds | folder | synthetic
  c.data.task = ""
  c.data.tfds_name = ""
  c.data.train_split = ""
  c.data.val_split = ""
  c.data.test_split = ""
  c.data.num_classes = 0
  c.data.label_fn = "label"
  c.data.data_dir = ""                  # TFDS data dir ('' = $TFDS_DATA_DIR or default)
  c.data.folder_root = ""               # for source=folder: root/<split>/<class>/*.jpg
  c.data.value_range = "auto"           # auto | minus1_1 | imagenet | unit
  c.data.resize_method = "bicubic"      # bicubic | bilinear
  c.data.synthetic_seed = 0
  c.data.num_train = 1000               # synthetic: sizes of the generated splits
  c.data.num_val = 200
  c.data.num_test = 1000

  c.method = ml_collections.ConfigDict()
  c.method.name = "heat"                # any of heat_jax.methods.available_methods()

  # Each method owns its options (`default_config()` in its file under heat_jax/methods).
  for block, defaults in method_config_blocks().items():
    c[block] = defaults

  c.seg = seg_config()                  # task_kind=segmentation: decoder, loss, inference

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.wd_mask = "all"               # all | kernels | ndim>1
  c.optim.clip_norm = 0.0               # 0 = no clipping
  c.optim.warmup_epochs = 10
  c.optim.warmup_init_lr = 1e-6
  c.optim.min_lr = 1e-5
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.schedule = "cosine"           # cosine | poly (mmseg: (1 - t/T) ** poly_power)
  c.optim.poly_power = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100
  c.train.batch_size = 64
  c.train.accum_steps = 1               # micro-batches per step (batch_size / k each)
  c.train.eval_batch_size = 256
  c.train.max_steps = 0                 # > 0 caps the run (smoke tests)
  c.train.bf16 = False
  c.train.log_every_steps = 10
  c.train.eval_every_epochs = 10
  c.train.checkpoint_every_steps = 200
  c.train.resume = True
  c.train.export_merged = False
  c.train.progress = True

  # What the model predicts and how it is measured (heat_jax.tasks, heat_jax.evaluation):
  # evals = {name: {split, metrics (comma-separated), every_epochs (0 = train.eval_every_epochs)}};
  # a split the data lacks (val) is skipped; results hold <name>_<metric> (test_top1, ...).
  c.task_kind = "classification"
  c.evals = default_evals()
  return c


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses `first,key=value,flag` against `spec` (name -> default).

  A leading bare token maps to the first spec key (e.g. the task in `dtd,method=lora`).
  A later bare `key` means True. Types come from the defaults; bools are strict; for a
  float default an integer literal stays an int (`budget=1` is one head, `1.0` all).
  """
  # Untyped fields: `_cast` decides the type (`budget=1` stays an int, see below).
  out = ml_collections.ConfigDict(
      {k: ml_collections.FieldReference(v, field_type=object) for k, v in spec.items()})
  if not arg:
    return out
  names = list(spec)
  for i, token in enumerate(t for t in arg.split(",") if t):
    if "=" in token:
      key, value = token.split("=", 1)
    elif i == 0 and names:
      key, value = names[0], token
    else:
      key, value = token, "True"
    key = key.strip()
    if key not in spec:
      raise ConfigError(f"unknown config argument {key!r}; valid: {', '.join(names)}")
    out[key] = _cast(key, value.strip(), spec[key])
  return out


def _cast(key: str, value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value not in ("True", "False", "true", "false", "1", "0"):
      raise ConfigError(f"config argument {key}={value!r} must be True or False")
    return value in ("True", "true", "1")
  try:
    if isinstance(default, int):
      return int(value)
    if isinstance(default, float):
      # An integer literal stays an int: for `budget` 1 is one head, 1.0 all heads
      # (heat_jax.importance.selection); float fields convert it back on assignment.
      return int(value) if value.lstrip("+-").isdigit() else float(value)
  except ValueError:
    raise ConfigError(f"config argument {key}={value!r} must be a "
                      f"{type(default).__name__}") from None
  return value
