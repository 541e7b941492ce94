"""The built-in offline study (default of `heat-jax` and `python run.py`).

A small ViT (`ViT-demo`: 32x32 images, patch 8, 4 layers x 8 heads, width 64)
pretrained on the synthetic pre-training mixture (the default settings' backbone ships
in heat_jax/assets; other `pretrain_*` settings are pretrained once and cached under
`$HEAT_JAX_CACHE/demo`), then on four synthetic downstream tasks HEAT (top-TIS heads)
is compared with the same budget of random and of bottom heads, LoRA, a linear probe
and full fine-tuning. Small offline study, NOT a VTAB result. Every run of the study
starts afresh, also when the command is rerun.

  heat-jax                                       # 1 seed, 24 runs (python run.py: the same)
  heat-jax --config=demo:seeds=3                 # the 3-seed table of the README
  heat-jax --config=demo:tasks=texture+count,variants=heat+heat_random

Arguments: seeds (>= 1), tasks and variants (lists joined with `+`), epochs, budget
(heads kept), strategy (TIS strategy), model, pretrain_steps, pretrain_images. Tasks:
sprite_x, sprite_orientation, count, texture, digits (heat_jax/data/synthetic.py);
variants (heat_jax/study.py VARIANTS): heat, heat_random, heat_bottom, lora, linear, full
(the default set), and hst, kadaptation, heat_rnd_cls, heat_rnd_cls_bottom (heads scored through a random
classifier instead of the linear probe), heat_probe_init (training starts from the probe
instead of the zero classifier). `study.validate` checks every value before the
pretraining starts.

  # does probe scoring pick better heads than random-classifier scoring?
  heat-jax --config=demo:seeds=3,variants=heat+heat_random+heat_bottom\
+heat_rnd_cls+heat_rnd_cls_bottom     (one argument)
"""

import ml_collections

from heat_jax.configs.common import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo study config; `arg` as in the module docstring."""
  args = parse_arg(arg, seeds=1, tasks="sprite_x,sprite_orientation,count,texture",
                   variants="heat,heat_random,heat_bottom,lora,linear,full", epochs=6,
                   budget=8, strategy="head", model="ViT-demo", pretrain_steps=1500,
                   pretrain_images=20000)
  c = ml_collections.ConfigDict()
  c.job = "study"

  base = base_config()
  base.model.name = args.model          # ViT-demo: 32px, patch 8 (16 tokens), 4 x 8 heads
  base.model.image_size = 32
  base.model.drop_path_rate = 0.0
  base.data.source = "synthetic"
  base.data.num_train = 1000            # train800 + val200, like a VTAB-1k task
  base.data.num_val = 200
  base.data.num_test = 1000
  base.train.batch_size = 50
  base.train.eval_batch_size = 250
  base.train.epochs = args.epochs
  base.train.eval_every_epochs = args.epochs   # evaluate once, at the end
  base.train.log_every_steps = 20
  base.train.progress = False
  base.optim.lr = 3e-3
  base.optim.warmup_epochs = 1
  base.optim.min_lr = 1e-5
  base.heat.budget = args.budget        # 8 of 32 heads
  base.heat.scope = "global"
  base.importance.strategy = args.strategy
  base.importance.batch_size = 100
  base.importance.num_batches = 0       # one pass over the 1000 training images
  base.lora.rank = 4
  base.lora.alpha = 4.0
  c.base = base

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.model = base.model.name
  c.pretrain.steps = args.pretrain_steps
  c.pretrain.batch_size = 64
  c.pretrain.num_images = args.pretrain_images
  c.pretrain.lr = 2e-3
  c.pretrain.weight_decay = 0.05
  c.pretrain.seed = 1234

  c.study = ml_collections.ConfigDict()
  c.study.tasks = args.tasks.replace("+", ",")
  c.study.variants = args.variants.replace("+", ",")
  c.study.seeds = args.seeds
  c.study.data_seed = 0
  c.study.compilation_cache = True      # persist XLA executables under $HEAT_JAX_CACHE/demo
  return c
