"""KAdaptation's released settings (He et al., arXiv 2203.16329).

Source: eric-ai-lab/PEViT, commit be6fb43ff54adeeffe720c663dd238976070558e:
`vision_benchmark/evaluation/model.py` (MultiheadAttention: phm_dim 32, ranks 1,
scale lora_attn_alpha / lora_attn_dim * 5 = 160, weight dropout 0.5, zero-filled fast
weights, v reusing q's fast weights, delta added after q's 1/sqrt(head_dim) scaling) and
the head of `vision_benchmark/evaluation/kadaptation_clip.py` (BatchNorm1d without affine,
then Linear). The release targets ELEVATER (5-shot, CLIP ViT-B/32) and searches lr and
weight decay per dataset with SGD (momentum 0.9); it publishes no VTAB-1k values, so
the optimizer fields keep the project's AdamW recipe (README "Released recipes").
"""

from __future__ import annotations

from typing import Any

SOURCE = ("eric-ai-lab/PEViT", "vision_benchmark/evaluation/model.py",
          "be6fb43ff54adeeffe720c663dd238976070558e")
SETTINGS = {
    "kadaptation.n": 32, "kadaptation.rank": 1, "kadaptation.rule_rank": 1,
    "kadaptation.scale": 160.0, "kadaptation.dropout": 0.5, "kadaptation.bias": True,
    "kadaptation.targets": "query,value", "kadaptation.init": "code_zero",
    "kadaptation.share_qv_fast_weights": True, "kadaptation.q_placement": "after_scale",
    "kadaptation.head": "bn_linear",
}


def apply(config: Any, task: str) -> None:
  del task   # the same for every task
  config.update_from_flattened_dict(SETTINGS)
