"""Reading PyTorch-world state dicts: `.safetensors` without torch, `.pth` with it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from heat_jax.errors import CheckpointError
from heat_jax.io_utils import atomic_open

TIMM_HF_URL = "https://huggingface.co/timm"   # timm's checkpoints on the Hugging Face Hub

TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def read(path: str | os.PathLike, kind: str, expected: str) -> dict[str, np.ndarray]:
  """A `.safetensors` (numpy only) or torch `.pth` / `.bin` state dict as numpy arrays.

  `kind` and `expected` name the model and the accepted files in the error messages.
  """
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    from safetensors.numpy import load_file
    try:
      return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f"cannot read {path} as .safetensors ({e}); delete it if it "
                            "is a partial download and try again") from None
  if suffix in TORCH_SUFFIXES:
    try:
      import torch
    except ImportError:
      raise CheckpointError(f"{path} is a PyTorch pickle; reading it needs torch "
                            "(pip install torch), or use the timm .safetensors file of "
                            "the same model") from None
    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors
      raise CheckpointError(f"cannot read {path} with torch.load ({e}); delete it if it "
                            "is a partial download and try again") from None
    if isinstance(obj, dict):
      obj = obj.get("model", obj)
      obj = obj.get("state_dict", obj)
    if not isinstance(obj, dict):
      raise CheckpointError(f"{path} does not hold a state dict")
    out = {}
    for key, value in obj.items():
      if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out
  raise CheckpointError(f"{path}: {kind} checkpoints must be {expected} files, not "
                        f"{suffix or 'no suffix'!r}")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
  """Writes a torch-style state dict as `.safetensors` (what timm loads), atomically."""
  from safetensors.numpy import save
  with atomic_open(path, "wb") as f:
    f.write(save(tensors, metadata={"format": "pt"}))
