"""VTAB-1k configs: `--config=configs/vtab.py:<task>[,key=value,...]`.

Defaults: HEAT on ViT-B/16 (original ImageNet-21k `ViT-B_16`), 224x224, the PETL recipe
of `base_config()`, trained on `train800val200` and evaluated on `test`.

Arguments (big_vision style, the first bare token is the task):
  task      one of the 19 ids in `heat_jax.data.vtab_tasks.TASK_NAMES` (`cifar` = cifar100)
  method    any registered method, `heat_jax.methods.available_methods()` (listed by
            `python run.py --help`; options: --config.<method block>.*, see the README)
  rank      the method's rank-like field (`Method.rank_field`: LoRA rank, adapter width, ...)
  budget, scope, select    HEAT head selection (`config.heat.*`)
  strategy  importance strategy (`config.importance.strategy`)
  seed, lr, epochs
  model     ViT-B_16 (default) | Swin-B | another registered model name
  source    tfds (default) | folder (default when `root` is given) | synthetic
  root      image root for source=folder (`config.data.folder_root`)
  data_dir  TFDS data dir (default: $TFDS_DATA_DIR, then ~/tensorflow_datasets)
  tune      train on train800 and evaluate on val200 (hyper-parameter search) instead of
            the final train800val200 -> test; `val_split` is val200 as well.

Examples: `dtd`, `dtd,method=lora,rank=8,model=Swin-B`, `dtd,source=folder,root=/data/dtd`,
`dtd,tune=True`, `dtd,method=hst,recipe=released`.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from heat_jax.configs.common import base_config, parse_arg
from heat_jax.configs.recipes import RECIPES, recipe_for
from heat_jax.data.vtab_tasks import TASK_NAMES, get_task
from heat_jax.errors import ConfigError
from heat_jax.methods import method_class

SWIN_B_CHECKPOINT = "swin_base_patch4_window7_224.ms_in22k"
PRETRAINED = {"ViT-B_16": "ViT-B_16", "Swin-B": SWIN_B_CHECKPOINT}

# Split names for source=folder: the NOAH / PETL-ViT export names (`<root>/<split>.txt` or
# `<root>/<split>/<class>/`); the folder source maps them onto an extracted DTD archive.
FOLDER_SPLITS = {"train": "train800val200", "val": "", "test": "test"}
FOLDER_TUNE_SPLITS = {"train": "train800", "val": "val200", "test": "val200"}


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config of one VTAB-1k task, e.g. `get_config('dtd,method=lora,rank=8')`."""
  c = base_config()
  a = parse_arg(arg, task="", method=c.method.name, rank=0, budget=c.heat.budget,
                scope=c.heat.scope, select=c.heat.select, strategy=c.importance.strategy,
                seed=c.seed, lr=c.optim.lr, epochs=c.train.epochs, model=c.model.name,
                source="", root="", data_dir="", tune=False, recipe="project")
  if not a.task:
    raise ConfigError("configs/vtab.py needs a task, e.g. --config=configs/vtab.py:dtd; "
                      f"valid tasks: {', '.join(TASK_NAMES)}")
  task = get_task(a.task)
  if a.recipe not in RECIPES:
    raise ConfigError(f"configs/vtab.py: recipe={a.recipe!r} is not one of {', '.join(RECIPES)}")

  c.model.name = a.model
  c.model.pretrained = PRETRAINED.get(a.model, a.model)

  source = a.source or ("folder" if a.root else "tfds")
  if source == "folder":
    splits = FOLDER_TUNE_SPLITS if a.tune else FOLDER_SPLITS
  else:
    splits = task.splits(tune=a.tune)
  c.data.source = source
  c.data.task = task.name
  c.data.tfds_name = task.tfds_name
  c.data.train_split = splits["train"]
  c.data.val_split = splits["val"]
  c.data.test_split = splits["test"]
  c.data.num_classes = task.num_classes
  c.data.label_fn = task.label_fn
  c.data.folder_root = a.root
  c.data.data_dir = a.data_dir

  c.method.name = a.method
  if a.rank:  # the method's own rank-like field (LoRA rank, adapter width, ...)
    field = method_class(a.method).rank_field
    if field is None:
      raise ConfigError(f"configs/vtab.py: method {a.method} has no rank; drop rank=")
    c.update_from_flattened_dict({field: a.rank})
  c.heat.budget = a.budget
  c.heat.scope = a.scope
  c.heat.select = a.select
  c.importance.strategy = a.strategy
  c.seed = a.seed
  c.optim.lr = a.lr
  c.train.epochs = a.epochs
  c.recipe = a.recipe
  if a.recipe == "released":
    recipe_for(a.method)(c, task.name)
  return c
