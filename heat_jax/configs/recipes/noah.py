"""NOAH's VTAB-1k settings for its LoRA and Adapter baselines (Zhang et al., arXiv 2206.04673).

Source: ZhangYuanhan-AI/NOAH, commit e9c55f360be4f7f1133a08bf84f86f0309e98f8c:
`configs/LoRA/VTAB/slurm_train_lora_vtab.sh` and `configs/Adapter/VTAB/
slurm_train_adapter_vtab.sh` (one setting for all 19 tasks: `--lr 0.001`, weight decay
1e-4, `--batch-size=64 --epochs=100 --no_aug --direct_resize`, mixup / cutmix /
smoothing 0), `experiments/LoRA/ViT-B_prompt_lora_8.yaml` (LoRA dim 8) and
`experiments/Adapter/ViT-B_prompt_adapter_8.yaml` (adapter dim 8), the defaults of
`supernet_train_prompt.py` (AdamW, cosine, 10 warm-up epochs from 1e-6, min lr 1e-5,
drop path 0.1), `lib/datasets.py` (Resize((224, 224)) bicubic, ImageNet mean / std) and
the README's backbone, the original `imagenet21k/ViT-B_16.npz` (passed as --resume).
Not per task. NOAH's LoRA scaling and its adapter's exact form were not checked: the
method options other than the rank / width keep the project's values (README
"Released recipes"). VPT is not covered: its script takes the prompt config per run and
no per-task choice is published there.
"""

from __future__ import annotations

from typing import Any

SOURCE = ("ZhangYuanhan-AI/NOAH", "configs/{LoRA,Adapter}/VTAB/slurm_train_*_vtab.sh",
          "e9c55f360be4f7f1133a08bf84f86f0309e98f8c")
COMMON = {
    "model.name": "ViT-B_16", "model.pretrained": "ViT-B_16", "model.drop_path_rate": 0.1,
    "optim.lr": 1e-3, "optim.weight_decay": 1e-4, "train.batch_size": 64,
    "train.epochs": 100, "optim.warmup_epochs": 10, "optim.warmup_init_lr": 1e-6,
    "optim.min_lr": 1e-5, "data.value_range": "imagenet", "data.resize_method": "bicubic",
}
WIDTH = {"lora": ("lora.rank", 8), "adapter": ("adapter.dim", 8)}


def apply(config: Any, task: str) -> None:
  del task   # the same for every task
  field, value = WIDTH[config.method.name]
  config.update_from_flattened_dict({**COMMON, field: value})
