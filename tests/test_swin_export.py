"""Swin merged export: `merged.safetensors` in timm's layout, read by heat_jax and timm.

* `to_timm` is the exact inverse of the loader on a real timm state dict (the
  committed fixture written by timm), key for key and bit for bit;
* a Swin-tiny LoRA run through run.py writes merged.safetensors; heat_jax's own Swin
  loader reads it back to the merged parameters exactly, and the plain model's logits
  equal the adapter-loaded (unmerged) model's;
* timm (optional: torch + timm) loads it with `timm.create_model('swin_tiny_...',
  pretrained=True, pretrained_cfg_overlay={'file': ...})` into a SwinTransformer of the
  same dims, strictly, and gives the same logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heat_jax.checkpoints import swin_timm

FIXTURES = Path(__file__).parent / "fixtures"
RUN = ("--config=configs/smoke.py:method=lora,model=Swin-tiny", "--config.train.epochs=1",
       "--config.train.export_merged=True", "--config.optim.lr=0.03")   # a visible LoRA delta
TOL = 1e-4
# heat_jax's Swin-tiny (heat_jax/models/swin_configs.py) in timm's terms.
SWIN_TINY = dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2),
                 num_heads=(2, 4))


def test_to_timm_inverts_the_loader_on_a_timm_state_dict():
  state = swin_timm.load_state_dict(FIXTURES / "swin_tiny.safetensors")
  canonical, facts = swin_timm.to_canonical(state)
  assert not any(k.startswith("head.") for k in facts["dropped"])   # the classifier is read
  np.testing.assert_array_equal(canonical["head/kernel"], state["head.fc.weight"].T)
  np.testing.assert_array_equal(canonical["head/bias"], state["head.fc.bias"])
  back = swin_timm.to_timm(canonical)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].dtype == np.float32 and back[key].shape == value.shape, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_to_timm_refuses_unmerged_extension_parameters():
  from heat_jax.errors import CheckpointError
  state = swin_timm.load_state_dict(FIXTURES / "swin_tiny.safetensors")
  canonical, _ = swin_timm.to_canonical(state)
  canonical["layers_0/blocks_0/attn/lora_query/a"] = np.zeros((32, 4), np.float32)
  with pytest.raises(CheckpointError, match="lora_query"):
    swin_timm.to_timm(canonical)


@pytest.fixture(scope="module")
def swin_run(cli_run):
  from heat_jax import artifacts, model_spec
  work, _ = cli_run(*RUN)
  model, variables = artifacts.load_adapter(str(work))
  meta = artifacts.read_adapter_json(str(work))
  plain = model_spec.model_from_spec({**meta["model"], "extensions": []})
  images = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, images, train=False))
  assert np.abs(want).max() > 1e-3   # a trained classifier
  return work, model, variables, plain, images, want


def test_merged_safetensors_reads_back_into_heat_jax(swin_run):
  from flax import traverse_util
  from safetensors.numpy import load_file

  from heat_jax import artifacts, checkpoints
  work, model, variables, plain, images, want = swin_run
  path = work / "merged.safetensors"
  assert path.exists() and not (work / "merged.npz").exists()
  _, merged = artifacts.merge_extensions(model, variables["params"])
  loaded = checkpoints.load_pretrained(str(path), plain)   # heat_jax's Swin loader
  flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
  flat_merged = traverse_util.flatten_dict(merged, sep="/")
  assert set(flat_loaded) == set(flat_merged)
  for key, value in flat_merged.items():   # the trained head included (same class count)
    np.testing.assert_array_equal(flat_loaded[key], np.asarray(value), err_msg=key)
  state = load_file(str(path))
  np.testing.assert_array_equal(state["head.fc.weight"], np.asarray(merged["head"]["kernel"]).T)
  got = np.asarray(plain.apply({"params": loaded}, images, train=False))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # The checks have power: without its LoRA delta the model's logits differ far more.
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  no_lora = traverse_util.unflatten_dict(
      {k: np.zeros_like(v) if "/lora_" in k and k.endswith("/b") else v
       for k, v in flat.items()}, sep="/")
  base = np.asarray(model.apply({**variables, "params": no_lora}, images, train=False))
  assert np.abs(base - want).max() > 10 * TOL


def test_timm_loads_merged_safetensors_and_agrees(torch_and_timm, swin_run):
  torch, timm = torch_and_timm
  work, _, _, plain, images, want = swin_run
  assert (plain.embed_dim, plain.depths, plain.num_heads, plain.window_size,
          plain.patch_size) == (32, (2, 2), (2, 4), 4, 4), "Swin-tiny changed"
  net = timm.create_model(
      "swin_tiny_patch4_window7_224", pretrained=True, num_classes=want.shape[-1],
      pretrained_cfg_overlay={"file": str(work / "merged.safetensors")},
      **SWIN_TINY).eval()
  from safetensors.torch import load_file
  # timm's loader would also accept a file with missing keys only if told to; check
  # strictly that the file is exactly this model's state dict.
  net.load_state_dict(load_file(str(work / "merged.safetensors")), strict=True)
  with torch.no_grad():
    theirs = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
  diff = float(np.abs(theirs - want).max())
  print(f"Swin-tiny LoRA merged: max |timm - heat_jax| logits = {diff:.3g} "
        f"(logits up to {np.abs(want).max():.3g})")
  assert diff <= TOL, f"timm vs heat_jax logits differ by {diff:.3g}"
