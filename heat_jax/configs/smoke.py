"""A seconds-long smoke run: random-init ViT-micro on a synthetic task, HEAT by default.

  heat-jax --config=smoke:method=lora --workdir=/tmp/smoke   (or --config=configs/smoke.py:...)
"""

import ml_collections

from heat_jax.configs.common import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, method="heat", task="texture", model="ViT-micro")
  c = base_config()
  c.model.name = args.model
  c.model.pretrained = ""
  c.model.image_size = 32
  c.model.drop_path_rate = 0.0
  c.data.source = "synthetic"
  c.data.task = args.task
  c.data.num_train = 128
  c.data.num_val = 32
  c.data.num_test = 64
  c.method.name = args.method
  c.heat.budget = 2
  c.importance.batch_size = 32
  c.importance.num_batches = 2
  c.train.batch_size = 32
  c.train.eval_batch_size = 32
  c.train.epochs = 2
  c.train.eval_every_epochs = 1
  c.train.log_every_steps = 2
  c.optim.warmup_epochs = 0
  return c
