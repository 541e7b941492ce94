"""HST's released VTAB-1k recipe (Lin et al., arXiv 2310.05393).

Source: AFeng-x/HST, `train_scripts/vit/vtab/<task>/train_s4.sh`, commit
ee89571c646e6d60cdddea9ff7b4ab521558a49d (every task's script read; values are the
flags, not the trailing comments, which disagree for eurosat (wd 5e-2) and kitti
(lr 1e-3)). Common to all 19 scripts: 2 processes x `--batch-size 32` (global 64),
`--epochs 100`, `--opt adamw`, `--warmup-lr 1e-7 --warmup-epochs 10`, `--min-lr 1e-8`,
cosine schedule (train.py default `--sched cosine`), `--no-aug --direct-resize`,
mixup / cutmix / smoothing 0, `--amp`, and `--model vit_base_patch16_224_in21k`, which
the release's models/vision_transformer.py points at the AugReg file
`augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz` (registry name
`augreg/B_16`). Weight decay skips parameters with ndim <= 1 (optim_factory.py).
Input: Resize + CenterCrop 224, bicubic, mean = std = 0.5 ([-1, 1]).
Deviations (README "Released recipes"): fp32 instead of AMP; the lr follows the cosine
per step, not per epoch; images are resized to 224 x 224 (no centre crop); the last
epoch is reported, not the best test epoch.
"""

from __future__ import annotations

from typing import Any

SOURCE = ("AFeng-x/HST", "train_scripts/vit/vtab/<task>/train_s4.sh",
          "ee89571c646e6d60cdddea9ff7b4ab521558a49d")
SCRIPT_DIRS = {"cifar100": "cifar_100", "oxford_flowers102": "flowers102",
               "oxford_iiit_pet": "pets"}    # the release's directory where it differs

# task: (lr, weight decay, drop path)
PER_TASK = {
    "cifar100": (1e-2, 5e-4, 0.0),
    "caltech101": (1e-3, 5e-4, 0.1),
    "dtd": (1e-2, 5e-4, 0.0),
    "oxford_flowers102": (1e-3, 5e-5, 0.0),
    "oxford_iiit_pet": (1e-2, 5e-4, 0.0),
    "svhn": (1e-2, 5e-5, 0.1),
    "sun397": (1e-2, 5e-5, 0.0),
    "patch_camelyon": (5e-3, 5e-4, 0.1),
    "eurosat": (1e-3, 5e-4, 0.1),
    "resisc45": (5e-3, 5e-4, 0.0),
    "diabetic_retinopathy": (1e-3, 5e-5, 0.1),
    "clevr_count": (1e-3, 5e-4, 0.1),
    "clevr_dist": (5e-3, 5e-4, 0.1),
    "dmlab": (5e-3, 5e-4, 0.1),
    "kitti": (5e-3, 5e-2, 0.1),
    "dsprites_loc": (5e-3, 5e-4, 0.1),
    "dsprites_ori": (1e-3, 5e-4, 0.1),
    "smallnorb_azi": (1e-3, 5e-4, 0.1),
    "smallnorb_ele": (1e-3, 5e-2, 0.2),
}
COMMON = {
    "model.name": "ViT-B_16", "model.pretrained": "augreg/B_16",
    "train.batch_size": 64, "train.epochs": 100,
    "optim.warmup_epochs": 10, "optim.warmup_init_lr": 1e-7, "optim.min_lr": 1e-8,
    "optim.wd_mask": "ndim>1", "optim.b1": 0.9, "optim.b2": 0.999, "optim.clip_norm": 0.0,
    "data.value_range": "minus1_1", "data.resize_method": "bicubic",
    "hst.drop_path": "auto",   # the release uses one rate for backbone and side network
}


def apply(config: Any, task: str) -> None:
  lr, wd, drop_path = PER_TASK[task]
  config.update_from_flattened_dict({**COMMON, "optim.lr": lr, "optim.weight_decay": wd,
                                     "model.drop_path_rate": drop_path})
