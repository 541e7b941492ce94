"""Where a run's pretrained weights and input normalisation came from (results.json).

`checkpoint_source(name_or_path, path)`: the registered name, the URL it is fetched
from (or the Hub repository / file), the local path, and the sha256 the registry knows
for the public file ("unknown" when no public source states one; the file's own
sha256 is recorded beside it by the run). `normalization(value_range)`: the per-channel
mean and std applied to [0, 1] pixels, so (x / 255 - mean) / std reproduces the input.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from heat_jax.checkpoints import get_checkpoint
from heat_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

UNKNOWN = "unknown"


def checkpoint_source(name_or_path: str, path: Optional[str] = None) -> dict[str, Any]:
  """{name, url, path, published_sha256} of the pretrained file."""
  text = str(name_or_path)
  info = get_checkpoint(text)
  if info is not None:
    url = (f"hf://{info.hf_repo}/{info.hf_filename}@{info.hf_revision}" if info.hf_repo
           else info.url)
    return {"name": info.name, "url": url, "path": None if path is None else str(path),
            "published_sha256": info.sha256 or UNKNOWN}
  url = text if re.match(r"(https?|gs)://", text) else None
  return {"name": None, "url": url, "path": str(path or text), "published_sha256": UNKNOWN}


def normalization(value_range: Optional[str]) -> dict[str, Any]:
  """The input normalisation of a value range: mean / std over [0, 1] pixels."""
  if value_range == "minus1_1":
    mean, std = [0.5] * 3, [0.5] * 3
  elif value_range == "unit":
    mean, std = [0.0] * 3, [1.0] * 3
  elif value_range == "imagenet":
    mean, std = [float(v) for v in IMAGENET_MEAN], [float(v) for v in IMAGENET_STD]
  else:
    return {"value_range": value_range, "mean": None, "std": None}
  return {"value_range": value_range, "mean": [round(v, 6) for v in mean],
          "std": [round(v, 6) for v in std]}
