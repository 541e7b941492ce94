"""ADE20K semantic segmentation (mmseg's 160k recipe), HST + UperNet by default.

  python run.py --config=configs/ade20k.py --workdir=workdirs/ade20k/hst \
      --config.data.folder_root=/data/ADEChallengeData2016
  python run.py --config=configs/ade20k.py:method=lora,decoder=fpn ...
  python run.py --config=configs/ade20k.py:method=hst,multiscale ...   # +flip, 6 scales

ViT-B/16 at 512x512 crops, 150 classes (label 0 ignored: reduce_zero_label), batch 16
(mmseg: 8 GPUs x 2), AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, linear
warm-up over one epoch (1263 iterations; mmseg 1500), then poly decay (power 1) to 0 at 160k iterations;
UperNet 512 channels + FCN auxiliary head (loss weight 0.4) or Semantic FPN; sliding
window 512, stride 341; single scale, or `multiscale`: scales 0.5-1.75 + flip.
The data: see `heat_jax.data.ade20k` (folder or TFDS scene_parse150).
"""

import ml_collections

from heat_jax.configs.common import base_config, parse_arg
from heat_jax.tasks.segmentation import default_evals as seg_evals

TRAIN_IMAGES = 20210
BATCH = 16
ITERATIONS = 160_000
WARMUP_ITERATIONS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, method="hst", decoder="upernet", multiscale=False,
                   model="ViT-B_16", pretrained="ViT-B_16")
  c = base_config()
  c.task_kind = "segmentation"
  c.evals = seg_evals()
  c.model.name = args.model
  c.model.pretrained = args.pretrained
  c.model.image_size = 512
  c.model.drop_path_rate = 0.1
  c.data.source = "ade20k"
  c.data.tfds_name = "scene_parse150"
  c.data.num_classes = 150
  c.data.value_range = "imagenet"       # mmseg's mean / std normalisation
  c.method.name = args.method
  c.seg.decoder = args.decoder
  c.seg.channels = 512 if args.decoder == "upernet" else 256
  c.seg.aux_weight = 0.4 if args.decoder == "upernet" else 0.0
  c.seg.blocks = "3,5,7,11"
  c.seg.mode = "slide"
  c.seg.crop = 512
  c.seg.stride = 341
  if args.multiscale:
    c.seg.scales = "0.5,0.75,1.0,1.25,1.5,1.75"
    c.seg.flip = True
  c.importance.classifier = "model"
  c.optim.lr = 6e-5
  c.optim.weight_decay = 0.01
  c.optim.wd_mask = "all"
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.schedule = "poly"
  c.optim.poly_power = 1.0
  steps_per_epoch = TRAIN_IMAGES // BATCH
  # mmseg warms up over 1500 iterations; the engine counts warm-up in whole epochs
  # (config.optim.warmup_epochs is an integer): 1 epoch = 1263 iterations.
  c.optim.warmup_epochs = max(1, round(WARMUP_ITERATIONS / steps_per_epoch))
  c.optim.warmup_init_lr = 6e-5 * 1e-6
  c.optim.min_lr = 0.0
  c.train.batch_size = BATCH
  c.train.eval_batch_size = 8
  c.train.epochs = -(-ITERATIONS // steps_per_epoch)
  c.train.max_steps = ITERATIONS
  c.train.eval_every_epochs = 16_000 // steps_per_epoch   # mmseg: every 16k iterations
  c.train.checkpoint_every_steps = 4000
  c.train.log_every_steps = 50
  return c
