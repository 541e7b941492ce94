"""A short segmentation smoke run: random-init ViT on synthetic shapes, any method.

40 steps of 0.1-0.3 s each; the XLA compiles of init, train and eval steps dominate
(minutes on a loaded 2-core CPU, see README "Semantic segmentation").

  python run.py --config=configs/smoke_seg.py:method=hst --workdir=/tmp/smoke_seg
  python run.py --config=configs/smoke_seg.py:method=lora,decoder=fpn

Offline (`seg_synthetic`: 4 classes, 64 px, exact masks); UperNet (or Semantic FPN) of
width 32 on HST's dense side network (widths scaled down to 16,16,32,32 for the tiny
backbone) or on the ViT neck of blocks 0-3 (lora, linear, full, heat). Sliding-window
inference with a window as large as the image.
"""

import ml_collections

from heat_jax.configs.common import base_config, parse_arg
from heat_jax.tasks.segmentation import default_evals as seg_evals


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, method="hst", decoder="upernet", model="ViT-demo", steps=40)
  c = base_config()
  c.task_kind = "segmentation"
  c.evals = seg_evals()
  c.model.name = args.model
  c.model.pretrained = ""
  c.model.image_size = 64
  c.model.drop_path_rate = 0.0
  c.data.source = "seg_synthetic"
  c.data.num_classes = 4
  c.data.num_train = 96
  c.data.num_val = 0
  c.data.num_test = 32
  c.data.value_range = "unit"
  c.method.name = args.method
  c.seg.decoder = args.decoder
  c.seg.channels = 32
  c.seg.aux_channels = 16
  c.seg.blocks = "0,1,2,3"
  c.seg.mode = "slide"
  c.hst.widths = "16,16,32,32"
  c.hst.heads = "2,2,4,4"
  c.heat.budget = 4
  c.importance.classifier = "model"     # the fresh decoder reads out the TIS gradient
  c.importance.batch_size = 16
  c.importance.num_batches = 2
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0
  c.optim.min_lr = 0.0
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.epochs = 100
  c.train.max_steps = args.steps
  c.train.eval_every_epochs = 100
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 1000
  return c
