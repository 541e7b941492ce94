"""The built-in offline study (default of `python run.py`).

A small ViT is pretrained once on a synthetic pre-training mixture (cached), then on
four synthetic downstream tasks HEAT (top-TIS heads) is compared with the same budget
of random and of bottom heads, LoRA, a linear probe and full fine-tuning.
Small offline study, NOT a VTAB result.

  python run.py                                  # 1 seed, a few minutes on 2 CPU cores
  python run.py --config=configs/demo.py:seeds=3 # the 3-seed table of the README
"""

import ml_collections

from configs.common import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, seeds=1, tasks="sprite_x,sprite_orientation,count,texture",
                   variants="heat,heat_random,heat_bottom,lora,linear,full", epochs=6,
                   budget=4, strategy="head")
  c = ml_collections.ConfigDict()
  c.job = "study"

  base = base_config()
  base.model.name = "ViT-tiny"          # 32x32, patch 4, 4 layers x 4 heads, width 64
  base.model.image_size = 32
  base.model.drop_path_rate = 0.0
  base.data.source = "synthetic"
  base.data.num_train = 1000            # train800 + val200, like a VTAB-1k task
  base.data.num_val = 200
  base.data.num_test = 1000
  base.train.batch_size = 50
  base.train.eval_batch_size = 250
  base.train.epochs = args.epochs
  base.train.eval_every_epochs = args.epochs
  base.train.log_every_steps = 20
  base.train.progress = False
  base.optim.lr = 3e-3
  base.optim.warmup_epochs = 1
  base.optim.min_lr = 1e-5
  base.heat.budget = args.budget
  base.heat.scope = "global"
  base.importance.strategy = args.strategy
  base.importance.batch_size = 100
  base.importance.num_batches = 0
  base.lora.rank = 4
  base.lora.alpha = 4.0
  c.base = base

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.model = base.model.name
  c.pretrain.steps = 1500
  c.pretrain.batch_size = 64
  c.pretrain.num_images = 20000
  c.pretrain.lr = 2e-3
  c.pretrain.weight_decay = 0.05
  c.pretrain.seed = 1234

  c.study = ml_collections.ConfigDict()
  c.study.tasks = args.tasks
  c.study.variants = args.variants
  c.study.seeds = args.seeds
  c.study.data_seed = 0
  return c
