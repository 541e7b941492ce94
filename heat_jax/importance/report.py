"""Saving the per-head importance with a run and drawing it as a layers x heads heatmap.

Files written into `workdir` (each atomically; the JSON last, so its presence means the
set is complete):
  importance.npy   float64 [layers, max_heads] scores (0 for absent heads)
  heads.npy        bool    [layers, max_heads] heads selected for adaptation
  importance.json  per-layer numbers: scores, global rank (1 = most important),
                   selected heads and counts, plus the caller's `meta` (strategy, ...).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from heat_jax.io_utils import as_path, atomic_open, write_json, write_npy
from heat_jax.importance.selection import top_order
from heat_jax.models.registry import HeadLayout

SCORES_FILE = "importance.npy"
HEADS_FILE = "heads.npy"
JSON_FILE = "importance.json"
_RESERVED = ("format", "version", "num_layers", "max_heads", "heads_per_layer",
             "total_heads", "num_selected", "layers")


def global_ranks(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """1-based rank of every valid head by score (ties by layer, head); 0 elsewhere."""
  layers, heads = np.nonzero(valid)
  order = top_order(np.asarray(scores, np.float64)[layers, heads], layers, heads)
  ranks = np.zeros(scores.shape, np.int64)
  ranks[layers[order], heads[order]] = np.arange(1, len(order) + 1)
  return ranks


def _check(scores: np.ndarray, selected: np.ndarray, valid: np.ndarray) -> None:
  if scores.shape != valid.shape or selected.shape != valid.shape:
    raise ValueError(f"scores {scores.shape} and selected {selected.shape} must have the "
                     f"layout's shape {valid.shape}")
  if np.any(selected & ~valid):
    raise ValueError("selected contains entries that are not heads of the model")


def save_importance(workdir: str | os.PathLike, scores: np.ndarray, selected: np.ndarray, *,
                    layout: HeadLayout, meta: Optional[Mapping[str, Any]] = None
                    ) -> dict[str, os.PathLike]:
  """Writes importance.npy, heads.npy and importance.json; returns their paths."""
  scores = np.asarray(scores, np.float64)
  selected = np.asarray(selected, bool)
  valid = layout.valid
  _check(scores, selected, valid)
  meta = dict(meta or {})
  clash = sorted(set(meta) & set(_RESERVED))
  if clash:
    raise ValueError(f"meta keys {clash} are reserved by importance.json")
  ranks = global_ranks(scores, valid)
  per_layer = []
  for l, n in enumerate(layout.heads_per_layer):
    chosen = [int(h) for h in np.nonzero(selected[l])[0]]
    per_layer.append({
        "layer": l,
        "num_heads": int(n),
        "scores": [float(s) for s in scores[l, :n]],
        "rank": [int(r) for r in ranks[l, :n]],
        "selected": chosen,
        "num_selected": len(chosen),
        "score_sum": float(scores[l, :n].sum()),
    })
  info = {
      "format": "heat_jax.importance",
      "version": 1,
      **meta,
      "num_layers": layout.num_layers,
      "max_heads": layout.max_heads,
      "heads_per_layer": [int(n) for n in layout.heads_per_layer],
      "total_heads": layout.total_heads,
      "num_selected": int(selected.sum()),
      "layers": per_layer,
  }
  workdir = as_path(workdir)   # local or gs://
  paths = {"scores": workdir / SCORES_FILE, "heads": workdir / HEADS_FILE,
           "json": workdir / JSON_FILE}
  write_npy(paths["scores"], scores)
  write_npy(paths["heads"], selected)
  write_json(paths["json"], info)
  return paths


def load_importance(workdir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
  """(scores, selected, info) as written by `save_importance`."""
  workdir = as_path(workdir)
  scores = np.load(io.BytesIO((workdir / SCORES_FILE).read_bytes()), allow_pickle=False)
  selected = np.load(io.BytesIO((workdir / HEADS_FILE).read_bytes()), allow_pickle=False)
  info = json.loads((workdir / JSON_FILE).read_text())
  return scores, selected, info


def plot_importance(path: str | os.PathLike, scores: np.ndarray,
                    selected: Optional[np.ndarray] = None,
                    valid: Optional[np.ndarray] = None, *,
                    title: Optional[str] = None, cmap: str = "viridis") -> os.PathLike:
  """Draws a layers x heads heatmap PNG; selected heads boxed, absent heads grey."""
  import matplotlib
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle
  from matplotlib.ticker import MaxNLocator

  scores = np.asarray(scores, np.float64)
  valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid, bool)
  selected = (np.zeros(scores.shape, bool) if selected is None
              else np.asarray(selected, bool))
  _check(scores, selected, valid)
  num_layers, max_heads = scores.shape

  fig = Figure(figsize=(min(20.0, 2.5 + 0.42 * max_heads),
                        min(16.0, 1.8 + 0.36 * num_layers)), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
  image = ax.imshow(np.ma.masked_array(scores, ~valid), cmap=colormap, aspect="auto",
                    interpolation="nearest")
  for l, h in zip(*np.nonzero(selected)):
    ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="red",
                           linewidth=1.6))
  ax.set_ylabel("layer")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  n_sel, n_valid = int(selected.sum()), int(valid.sum())
  ax.set_title(title or "head importance", fontsize=10)
  ax.set_xlabel(f"head\nred box: selected ({n_sel} of {n_valid} heads)"
                + ("; grey: no head" if not valid.all() else ""), fontsize=8)
  fig.colorbar(image, ax=ax, label="importance")
  fig.tight_layout()
  path = as_path(path)
  with atomic_open(path, "wb") as f:   # a buffer uploaded once for gs:// paths
    fig.savefig(f, format="png")
  return path
