"""Your own images: `--config=folder:root=DIR[,key=value,...]`.

Two layouts; the classes are the sorted class-folder names:
  DIR/<class>/*.jpg|jpeg|png           one pool of images: a held-out test split is carved
  DIR/train/<class>/...                with DIR/val/<class>/... and DIR/test/<class>/...
                                       when present
Without DIR/test/, the held-out split is DIR/val/ when present (then there is no val),
else a `holdout` fraction (default 0.2) of the pool / of DIR/train/ is carved off: the
images are ordered by a hash of their path below DIR (heat_jax/data/folder.py), so the
split is the same for every seed and every method, and adding images moves few others.
The training batch is clipped to the number of training images (a log line says so).

Arguments (the first bare token is the root):
  root        the image folder (required)
  method      any registered method: heat (default) | linear | full | bitfit | lora |
              adapter | vpt | hst | kadaptation
  rank        the method's rank-like field (LoRA rank, adapter width, ...)
  budget      HEAT heads kept (int count or float fraction in (0, 1.0])
  model       ViT-B_16 (default) | Swin-B | any registered model name
  pretrained  auto (the model's registered checkpoint, none for tiny test models) |
              a registered name, URL or file | '' (random init)
  image_size  0 = the model's own (224 for ViT-B_16)
  epochs, batch_size, lr, seed, holdout

Examples: `folder:root=~/pets`, `folder:root=~/pets,method=lora,rank=8,epochs=20`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import ml_collections

from heat_jax.configs.common import base_config, parse_arg
from heat_jax.errors import ConfigError

SPLIT_DIRS = ("train", "val", "test")


def splits(root: Path, holdout: float) -> dict[str, str]:
  """{'train', 'val', 'test'} split expressions of the folder source for `root`."""
  if not 0 < holdout < 1:
    raise ConfigError(f"configs/folder.py: holdout={holdout} must be a fraction in (0, 1)")
  keep = f"{100 * (1 - holdout):g}%"
  has = {name: (root / name).is_dir() for name in SPLIT_DIRS}
  pool = "train" if has["train"] else "."   # '.': the class folders of the root itself
  if not has["train"] and (has["val"] or has["test"]):
    raise ConfigError(f"{root} has {'val' if has['val'] else 'test'}/ but no train/; add "
                      f"{root}/train/<class>/ or put the class folders directly under {root}")
  if has["test"]:
    return {"train": pool, "val": "val" if has["val"] else "", "test": "test"}
  if has["val"]:
    return {"train": pool, "val": "", "test": "val"}
  return {"train": f"{pool}[:{keep}]", "val": "", "test": f"{pool}[{keep}:]"}


def count_train_images(root: Path, train_split: str) -> int:
  """Images the train split holds (the folder source's rounding of a % slice)."""
  from heat_jax.data.folder import image_files
  name = train_split.split("[", 1)[0]
  n = len(image_files(root / name))
  if "[:" in train_split:
    percent = float(train_split.split("[:", 1)[1].rstrip("%]"))
    n = int(round(n * percent / 100))
  return n


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config of a run on the image folder named by `arg` (see the module docstring)."""
  c = base_config()
  a = parse_arg(arg, root="", method=c.method.name, rank=0, budget=c.heat.budget,
                model=c.model.name, pretrained="auto", image_size=0, epochs=c.train.epochs,
                batch_size=c.train.batch_size, lr=c.optim.lr, seed=c.seed, holdout=0.2)
  if not a.root:
    raise ConfigError("configs/folder.py needs the image folder, e.g. "
                      "--config=folder:root=~/my_images (DIR/<class>/*.jpg)")
  root = Path(os.path.expanduser(a.root)).resolve()
  if not root.is_dir():
    raise ConfigError(f"configs/folder.py: root={a.root} is not a directory; point it at "
                      "DIR/<class>/*.jpg or DIR/train/<class>/*.jpg")
  from heat_jax.checkpoints import get_checkpoint
  from heat_jax.methods import method_class
  from heat_jax.models import model_defaults

  c.model.name = a.model
  defaults = model_defaults(a.model)   # ConfigError for an unknown model
  c.model.image_size = a.image_size or int(defaults.get("image_size", 224))
  pretrained = a.pretrained
  if pretrained == "auto":
    pretrained = a.model if get_checkpoint(a.model) is not None else ""
  c.model.pretrained = pretrained

  s = splits(root, a.holdout)
  c.data.source = "folder"
  c.data.folder_root = str(root)
  c.data.task = root.name
  c.data.num_classes = 0                # the class folders
  c.data.train_split, c.data.val_split, c.data.test_split = s["train"], s["val"], s["test"]

  c.method.name = a.method
  if a.rank:
    field = method_class(a.method).rank_field
    if field is None:
      raise ConfigError(f"configs/folder.py: method {a.method} has no rank; drop rank=")
    c.update_from_flattened_dict({field: a.rank})
  c.heat.budget = a.budget
  c.seed = a.seed
  c.optim.lr = a.lr
  c.train.epochs = a.epochs

  n_train = count_train_images(root, s["train"])
  if n_train < 1:
    raise ConfigError(f"configs/folder.py: no training images under {root} "
                      f"(split {s['train']!r}); expected DIR/<class>/*.jpg|png")
  batch = min(a.batch_size, n_train)
  # Printed, not logged: configs load while flags are parsed, before logging is set up.
  pool = "the images" if s["train"].startswith(".") else "train/"
  held_out = (f"the other {100 * a.holdout:g}% of {pool} (held out by a hash of each "
              "path: the same split for every run)" if "%" in s["test"] else
              f"{s['test']}/")
  print(f"configs/folder.py: {root}: training on {n_train} images, testing on {held_out}"
        + (f"; batch size {batch} (the training images) instead of {a.batch_size}"
           if batch < a.batch_size else ""), file=sys.stderr)
  c.train.batch_size = batch
  c.importance.batch_size = min(c.importance.batch_size, n_train)
  return c
