"""The peft-style adapter pair (adapter_config.json + adapter_model.safetensors).

Made by run.py on a local base checkpoint and read back with one call
(`heat_jax.load_adapter(workdir, base=...)`); the base's sha256 is checked. Model state
(batch statistics) round-trips through both adapter pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import heat_jax
from heat_jax import artifacts, checkpoints, model_spec
from heat_jax.errors import CheckpointError
from heat_jax.io_utils import load_npz, write_npz
from heat_jax.models import create_model
from heat_jax.models.extensions import Extension, register_extension
from heat_jax.testing import fake_checkpoints
from heat_jax.training import partition

MICRO = dict(hidden=32, layers=2, heads=2, mlp=64, patch=8, grid=4, num_classes=10)


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
  """The base checkpoint (ViT-micro, vit_jax layout) and a copy with one value changed."""
  folder = tmp_path_factory.mktemp("bases")
  arrays = fake_checkpoints.write_vit_npz(folder / "base.npz", seed=3, **MICRO)
  other = dict(arrays)
  key = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"
  other[key] = other[key] + 0.5
  write_npz(folder / "other.npz", other)
  return folder / "base.npz", folder / "other.npz"


@pytest.fixture(scope="module")
def heat_run(cli_run, base_files):
  base, _ = base_files
  work, _ = cli_run("--config=configs/smoke.py:method=heat", "--config.train.epochs=1",
                    f"--config.model.pretrained={base}")
  return work, base


def _test_accuracy(model, variables, results) -> float:
  from ml_collections import ConfigDict

  from heat_jax.data import build_task
  data = ConfigDict(results["config"]["data"])
  task = build_task(data, image_size=results["preprocess"]["image_size"])
  correct = total = 0
  for b in task.test.batches(32, pad=True):
    logits = np.asarray(model.apply(variables, b["image"], train=False))
    correct += float(((logits.argmax(-1) == b["label"]) * b["mask"]).sum())
    total += float(b["mask"].sum())
  assert total == results["num_test_examples"]
  return correct / total


def test_run_writes_a_peft_style_adapter(heat_run):
  from heat_jax.data import synthetic
  work, base = heat_run
  config = json.loads((work / "adapter_config.json").read_text())
  results = json.loads((work / "results.json").read_text())
  assert config["format"] == "heat_jax.peft_style.v1"
  assert config["library"] == "heat_jax" and config["library_version"] == heat_jax.__version__
  assert config["base_model_name_or_path"] == str(base)
  assert config["base_model_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
  assert config["method"] == "heat" and config["method_config"]["heat"]["budget"] == 2
  selected = np.load(work / "heads.npy", allow_pickle=False)
  assert config["method_state"]["selected"] == selected.tolist() and selected.sum() == 2
  assert config["num_classes"] == 12 and config["task"]["name"] == "synthetic/texture"
  assert config["class_names"] == synthetic.class_names("texture") == results["class_names"]
  assert config["preprocess"] == {"image_size": 32, "value_range": "minus1_1",
                                  "resize_method": "bicubic"}
  assert config["modules_to_save"] == ["head"]
  assert config["target_modules"] and all("MultiHeadDotProductAttention_0/" in m
                                          for m in config["target_modules"])
  assert config["num_scalars"] == results["trainable_params"]
  # The same arrays as adapter.npz, HEAT's head slices stored as selected elements only.
  tensors = load_file(str(work / "adapter_model.safetensors"))
  stored = load_npz(work / "adapter.npz")
  assert sorted(tensors) == sorted(stored) == sorted(config["entries"])
  for key in stored:
    np.testing.assert_array_equal(tensors[key], stored[key])
  assert sum(v.size for v in tensors.values()) == results["trainable_params"]


def test_one_call_loads_the_fine_tuned_model(heat_run):
  work, base = heat_run
  results = json.loads((work / "results.json").read_text())
  model, variables = heat_jax.load_adapter(str(work), base=str(base))
  # Independent: the accuracy the trainer measured on the final train state.
  assert _test_accuracy(model, variables, results) == pytest.approx(results["test_top1"])
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  got = np.asarray(model.apply(variables, images, train=False))
  old_model, old_variables = artifacts.load_adapter(str(work / "adapter.json"))
  np.testing.assert_array_equal(got, np.asarray(old_model.apply(old_variables, images)))


def test_base_hash_mismatch_is_a_clear_error_with_an_override(heat_run, base_files):
  work, base = heat_run
  _, other = base_files
  with pytest.raises(CheckpointError) as e:
    heat_jax.load_adapter(str(work), base=str(other))
  line = e.value.one_line()
  assert str(other) in line and "sha256" in line and "check_base=False" in line
  assert hashlib.sha256(base.read_bytes()).hexdigest()[:16] in line
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  model, right = heat_jax.load_adapter(str(work), base=str(base))
  _, wrong = heat_jax.load_adapter(str(work), base=str(other), check_base=False)
  # The override loads the other base, which changes the model: the check matters.
  assert np.abs(np.asarray(model.apply(right, images)) -
                np.asarray(model.apply(wrong, images))).max() > 1e-3


# ----------------------------------------------------------------------------- state


@register_extension
@dataclasses.dataclass(frozen=True)
class _BatchNormAfterMlp(Extension):
  """Test-only: BatchNorm on every MLP output, so the model carries `batch_stats`."""

  kind = "test_batchnorm_after_mlp"
  param_names = ("test_bn",)

  def branch(self, host, site, part, x, y, *, shared, deterministic):
    if part != "mlp":
      return y
    return nn.BatchNorm(use_running_average=deterministic, name="test_bn")(y)


def test_model_state_round_trips_through_both_adapter_pairs(tmp_path, base_files):
  ext = _BatchNormAfterMlp()
  model = create_model("ViT-micro", 4, extensions=(ext,))
  rng = jax.random.key(0)
  params = checkpoints.init_params(model, rng=rng)
  state = checkpoints.init_model_state(model, rng=rng)
  assert "batch_stats" in state
  noise = np.random.default_rng(1)
  flat_state = {k: noise.uniform(0.5, 2.0, np.shape(v)).astype(np.float32)
                for k, v in partition.flatten(state).items()}
  state = partition.unflatten(flat_state)
  flat = partition.flatten(params)
  trained = {k: (v + noise.normal(0, 0.1, np.shape(v))).astype(np.float32)
             if k.startswith("head/") or "/test_bn/" in k else v for k, v in flat.items()}
  mask = {k: k.startswith("head/") or "/test_bn/" in k for k in flat}
  artifacts.export_adapter(
      str(tmp_path), partition.unflatten(trained), mask,
      model_spec=model_spec.spec_of("ViT-micro", 4, {}, (ext,)),
      base={"checkpoint": None, "init_seed": 0, "interpolation": "zoom"},
      model_state=state, extra={"method": "test"})
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert config["num_state_scalars"] == sum(v.size for v in flat_state.values())
  images = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model.apply({"params": partition.unflatten(trained), **state}, images))
  for path in (tmp_path, tmp_path / "adapter.json"):
    loaded_model, variables = artifacts.load_adapter(str(path))
    for k, v in partition.flatten(variables["batch_stats"]).items():
      np.testing.assert_array_equal(v, flat_state["batch_stats/" + k])
    np.testing.assert_allclose(np.asarray(loaded_model.apply(variables, images)), want,
                               atol=1e-6)
  # A random-init adapter put on a checkpoint: refused, naming the reason.
  with pytest.raises(CheckpointError, match="random initialisation"):
    artifacts.load_adapter(str(tmp_path), base=str(base_files[0]))
