"""merged.npz (config.train.export_merged) loads into timm with timm's own npz loader.

Trains the smoke config (ViT-micro, synthetic data) through run.py, loads
`<workdir>/merged.npz` into a timm VisionTransformer with
`timm.models.vision_transformer._load_weights`, and compares timm's logits with
heat_jax's logits of the fine-tuned model (`load_adapter`; LoRA unmerged there).
Optional: skipped when torch or timm is not importable (the [tools] extra).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
# The smoke config's ViT-micro.
MICRO = dict(patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
             image_size=32, classifier="token", representation_size=None)


def _train(workdir: Path, method: str) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HEAT_JAX_CACHE=str(workdir.parent / "cache"))
  cmd = [sys.executable, "run.py", f"--config=configs/smoke.py:method={method}",
         f"--workdir={workdir}", "--config.train.export_merged=True",
         "--config.train.progress=False"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{out.stderr[-4000:]}"


def _load_recording_keys(vision_transformer, model, path: Path) -> set[str]:
  """timm's `_load_weights(model, path)`; returns the keys of the file timm read."""
  read: set[str] = set()

  class Recording(np.lib.npyio.NpzFile):
    def __getitem__(self, key):
      read.add(key)
      return super().__getitem__(key)

  real_load = np.load

  def load(*args, **kwargs):
    f = real_load(*args, **kwargs)
    f.__class__ = Recording
    return f

  np.load = load  # timm calls numpy.load inside _load_weights
  try:
    vision_transformer._load_weights(model, str(path))
  finally:
    np.load = real_load
  return read


@pytest.mark.parametrize("method", ["lora", "full"])
def test_timm_loads_merged_npz_and_agrees(torch_and_timm, tmp_path, method):
  torch, timm = torch_and_timm
  vision_transformer = timm.models.vision_transformer
  workdir = tmp_path / method
  _train(workdir, method)

  from heat_jax.artifacts import load_adapter
  from heat_jax.io_utils import load_npz
  model, variables = load_adapter(str(workdir))
  for key, value in MICRO.items():
    assert getattr(model, key) == value, f"the smoke model is no longer ViT-micro: {key}"
  assert model.approximate_gelu and model.layer_norm_eps == 1e-6
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(model.apply(variables, images, train=False))
  assert np.abs(ours).max() > 1e-2  # a trained head: the comparison is not 0 == 0

  merged = workdir / "merged.npz"
  arrays = load_npz(merged)
  net = vision_transformer.VisionTransformer(
      img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=64 / 32,
      num_classes=ours.shape[-1], class_token=True, global_pool="token", fc_norm=False,
      act_layer=functools.partial(torch.nn.GELU, approximate="tanh"),
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
  read = _load_recording_keys(vision_transformer, net, merged)
  assert set(arrays) - read == set(), "keys of merged.npz that timm ignores"
  # timm resamples a posemb of another shape and skips a head of another size silently.
  posemb = arrays["Transformer/posembed_input/pos_embedding"]
  assert posemb.shape == tuple(net.pos_embed.shape) == (1, 17, 32)
  np.testing.assert_array_equal(net.pos_embed.detach().numpy(), posemb)
  np.testing.assert_array_equal(net.head.weight.detach().numpy(), arrays["head/kernel"].T)

  with torch.no_grad():
    theirs = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
  diff = float(np.abs(theirs - ours).max())
  print(f"{method}: max |timm - heat_jax| logits = {diff:.3g} "
        f"(logits up to {np.abs(ours).max():.3g})")
  assert diff <= TOLERANCE, f"{method}: timm vs heat_jax logits differ by {diff:.3g}"
  if method == "lora":  # the check has power: without its LoRA the model differs more
    from flax import traverse_util
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    no_lora = traverse_util.unflatten_dict(
        {k: np.zeros_like(v) if "/lora_" in k and k.endswith("/b") else v
         for k, v in flat.items()}, sep="/")
    base = np.asarray(model.apply({"params": no_lora}, images, train=False))
    assert np.abs(base - ours).max() > 10 * TOLERANCE
