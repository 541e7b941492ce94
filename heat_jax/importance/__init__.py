"""Head importance (Taylor-expansion scores), head selection, and the importance map.

  compute_tis(model, params, batches, strategy=...)  -> [layers, max_heads] scores
  ablation_scores(model, params, batches)            -> slow per-head reference
  select_heads(scores, budget, scope=..., select=...) -> bool [layers, max_heads]
  head_features / fit_probe / with_probe             -> the linear-probe classifier
  save_importance / load_importance / plot_importance

`head_layout(model).valid` marks the entries that are heads (ragged for Swin); scores
are 0 and selections False everywhere else.
"""

from heat_jax.importance.probe import Probe, fit_probe, head_features, with_probe
from heat_jax.importance.report import (global_ranks, load_importance, plot_importance,
                                        save_importance)
from heat_jax.importance.selection import SCOPES, SELECTS, heads_to_keep, select_heads
from heat_jax.importance.sites import AttentionSite, find_attention_sites
from heat_jax.importance.tis import (AGGREGATES, NORMALIZE, STRATEGIES, ablation_scores,
                                     check_aggregate, check_normalize,
                                     check_strategy, compute_tis, make_tis_step,
                                     masked_cross_entropy, normalize_scores)
from heat_jax.models.registry import HeadLayout, head_layout

__all__ = [
    "AGGREGATES", "check_aggregate", "AttentionSite", "HeadLayout", "NORMALIZE", "Probe", "SCOPES", "SELECTS", "STRATEGIES",
    "ablation_scores", "check_normalize", "check_strategy", "compute_tis",
    "find_attention_sites", "fit_probe", "global_ranks", "head_features", "head_layout",
    "heads_to_keep", "load_importance", "make_tis_step", "masked_cross_entropy",
    "normalize_scores", "plot_importance", "save_importance", "select_heads", "with_probe",
]
