"""Every method trains on every new backbone family (tiny timm-layout ViTs), through
`experiment.run`; merged exports of timm-format models load into timm itself."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from heat_jax import artifacts, checkpoints, experiment
from heat_jax.models import create_model, model_family
from heat_jax.training import partition

FAMILIES = ("timm-dinov2-micro", "timm-clip-micro", "timm-gap-micro")
METHODS = (("heat", "head_weights"), ("heat", "lora"), ("lora", ""), ("adapter", ""),
           ("vpt", ""), ("bitfit", ""), ("kadaptation", ""), ("hst", ""), ("linear", ""),
           ("full", ""))
# Each method once (token methods on the one with registers), every family at least
# three times; the full grid carries `slow`.
COVER = {(m, f) for m, f in zip(METHODS, (
    "timm-dinov2-micro", "timm-clip-micro", "timm-gap-micro", "timm-clip-micro",
    "timm-dinov2-micro", "timm-gap-micro", "timm-clip-micro", "timm-dinov2-micro",
    "timm-gap-micro", "timm-clip-micro"))}
GRID = [pytest.param(m, f, id=f"{m[0]}{'-' + m[1] if m[1] else ''}-{f}",
                     marks=[] if (m, f) in COVER else [pytest.mark.slow])
        for m, f in itertools.product(METHODS, FAMILIES)]


def _config(tiny_config, family: str, method: str, tune: str):
  c = tiny_config
  c.model.name = family
  c.model.image_size = create_model(family, 2).image_size
  c.method.name = method
  if tune:
    c.heat.tune = tune
  c.heat.budget = 2
  c.data.num_train = 16
  c.data.num_test = 16
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.epochs = 1
  c.importance.num_batches = 1
  return c


@pytest.mark.parametrize("method,family", GRID)
def test_method_trains_on_backbone(tiny_config, tmp_path, method, family):
  name, tune = method
  c = _config(tiny_config, family, name, tune)
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert results["steps"] == 1 and np.isfinite(results["test_top1"])
  assert 0 < results["trainable_params"] <= results["total_params"]
  if name == "full":
    assert results["trainable_params"] == results["total_params"]
  elif name != "hst":   # HST's side network outgrows a micro backbone
    assert results["trainable_params"] < results["total_params"] / 2
  if name == "heat":
    heads = np.load(tmp_path / "heads.npy", allow_pickle=False)
    assert heads.shape == (2, 2) and heads.sum() == 2


def test_merged_safetensors_loads_back_as_the_same_model(tmp_path, caplog):
  """A timm-layout merged file (merged.safetensors) keeps its classifier through
  `load_pretrained` when the class count fits, so it gives the exported model's logits; for
  another class count (or keep_head=False, what training runs use) the head is fresh."""
  import logging
  model = create_model("timm-gap-micro", 3)
  params = checkpoints.init_params(model, rng=jax.random.key(0))
  rng = np.random.default_rng(1)   # every parameter moved, the zero-initialised head too
  params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape)
                        .astype(np.float32), params)
  path = tmp_path / "merged.safetensors"
  artifacts.export_merged(str(path), model, params)
  x = rng.uniform(-1, 1, (2, model.image_size, model.image_size, 3)).astype(np.float32)
  want = np.asarray(model.apply({"params": params}, x))
  again = checkpoints.load_pretrained(path, model)
  np.testing.assert_allclose(np.asarray(model.apply({"params": again}, x)), want,
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(again["head"]["kernel"], params["head"]["kernel"])
  caplog.set_level(logging.INFO, logger="absl")
  other = checkpoints.load_pretrained(path, create_model("timm-gap-micro", 5))
  assert other["head"]["kernel"].shape[-1] == 5
  assert "its classifier (3 classes) does not fit the model's 5 classes" in caplog.text
  fresh = checkpoints.load_pretrained(path, model, keep_head=False)
  assert not np.array_equal(fresh["head"]["kernel"], params["head"]["kernel"])


@pytest.fixture
def timm_kwargs():
  """timm constructor arguments of the tiny registered layouts (the test's own map)."""
  return {
      "timm-dinov2-micro": ("vit_small_patch14_reg4_dinov2",
                            dict(img_size=28, embed_dim=32, depth=2, num_heads=2,
                                 mlp_ratio=2.0)),
      "timm-clip-micro": ("vit_base_patch16_clip_quickgelu_224",
                          dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                               num_heads=2, mlp_ratio=2.0)),
      "timm-gap-micro": ("vit_medium_patch16_gap_256",
                         dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                              num_heads=2, mlp_ratio=2.0)),
  }


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_loads_into_timm(family, tmp_path, torch_and_timm, timm_kwargs):
  """LoRA + adapters-free merge of a trained-looking model: timm's own
  `load_state_dict(strict=True)` takes the file and gives heat_jax's logits."""
  torch, timm = torch_and_timm
  from heat_jax.methods.lora import LoraSpec
  assert model_family(family) == "timm_vit"
  model = create_model(family, 3, extensions=(LoraSpec(rank=2),))
  params = checkpoints.init_params(model, rng=jax.random.key(0))
  rng = np.random.default_rng(0)   # every parameter moved (LoRA's B starts at zero)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape)
                        .astype(np.float32), params)
  path = tmp_path / artifacts.merged_filename(model_family(family))
  assert path.name == "merged.safetensors"
  artifacts.export_merged(str(path), model, params)
  arch, kwargs = timm_kwargs[family]
  net = timm.create_model(arch, pretrained=False, num_classes=3, **kwargs).eval()
  from safetensors.torch import load_file
  net.load_state_dict(load_file(str(path)), strict=True)
  x = rng.uniform(-1, 1, (2, model.image_size, model.image_size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = np.asarray(model.apply({"params": params}, x))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # The export round-trips into heat_jax as well (plain model, no extensions).
  plain = create_model(family, 3)
  again = checkpoints.load_pretrained(path, plain)
  flat = partition.flatten(again)
  assert not any("lora" in k for k in flat)
