"""KAdaptation: factored Kronecker delta, init, gradients, merge, counts, engine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heat_jax import artifacts, checkpoints, experiment, losses
from heat_jax.data import build_task
from heat_jax.errors import ConfigError
from heat_jax.methods import MethodContext, get_method
from heat_jax.methods.kadaptation import (KAdaptationSpec, count_parameters, is_kadaptation,
                                          kron_delta, kron_matrix)
from heat_jax.models import create_model
from heat_jax.models.apply import apply_model
from heat_jax.models.extensions import Site
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer, epoch_batches
from heat_jax.training.metrics import read_metric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)


def _kron_reference(left, right, u, v):
  """sum_i kron(l_i r_i, u_i v_i) with numpy's own Kronecker product."""
  return sum(np.kron(left[i] @ right[i], u[i] @ v[i]) for i in range(len(u)))


def _logits(model, params, images=IMAGES):
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, images))(params))


def _perturbed(model, seed=0, scale=0.05):
  """Init params with every leaf (the zero-initialised factors too) made non-zero."""
  params = checkpoints.init_params(model, rng=jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape)
                      .astype(np.float32), params)


def _grads(model, params, images, labels):
  def loss(p):
    logits, _ = apply_model(model, p, {}, images, train=False)
    return losses.masked_cross_entropy(logits, labels, jnp.ones(len(labels)))
  return partition.flatten(jax.device_get(jax.jit(jax.grad(loss))(params)))


# ----------------------------------------------------------------------------- the delta


@pytest.mark.parametrize("n,m,rank,rule_rank", [(4, 3, 2, 2), (8, 1, 1, 1), (2, 5, 1, 2)])
def test_factored_delta_equals_explicit_kronecker_sum(n, m, rank, rule_rank):
  rng = np.random.default_rng(n * m)
  left, right = rng.standard_normal((n, n, rule_rank)), rng.standard_normal((n, rule_rank, n))
  u, v = rng.standard_normal((n, m, rank)), rng.standard_normal((n, rank, m))
  h = _kron_reference(left, right, u, v)
  x = rng.standard_normal((2, 5, n * m))
  got = kron_delta(*(jnp.asarray(a, jnp.float32) for a in (x, left, right, u, v)))
  np.testing.assert_allclose(got, x @ h, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(kron_matrix(left, right, u, v, xp=np), h, atol=1e-10)


class _Harness(nn.Module):
  """One attention-like site: the spec's shared + project hooks on x [B, T, D]."""

  spec: KAdaptationSpec
  heads: int = 2
  param_dtype = jnp.float32   # read by the spec's hooks, as on the real attention modules

  @nn.compact
  def __call__(self, x, train=False):
    d = x.shape[-1]
    site = Site(layer=0, num_heads=self.heads, head_dim=d // self.heads, width=d,
                family="vit", num_layers=1)
    shared = self.spec.shared(self)
    y = jnp.zeros((*x.shape[:-1], self.heads, d // self.heads), x.dtype)
    return self.spec.project(self, site, "query", x, y, shared=shared,
                             deterministic=not train)


def _harness_params(spec, d):
  h = _Harness(spec)
  params = h.init(jax.random.key(0), jnp.zeros((1, 1, d)))["params"]
  rng = np.random.default_rng(1)
  return h, jax.tree.map(lambda p: np.asarray(p) + rng.standard_normal(p.shape)
                         .astype(np.float32), params)


def test_delta_lands_in_the_per_head_layout_with_the_bias():
  d, n = 12, 4
  spec = KAdaptationSpec(n=n, rank=1, scale=3.0, targets=("query",))
  h, params = _harness_params(spec, d)
  x = np.random.default_rng(2).standard_normal((2, 3, d)).astype(np.float32)
  got = h.apply({"params": params}, x)
  r, f = params["kadaptation_rules"], params["kadaptation_query"]
  want = 3.0 * x @ _kron_reference(r["query_left"], r["query_right"], f["u"], f["v"])
  want = want + params["kadaptation_bias"].reshape(-1)   # b [heads, head_dim], row-major
  np.testing.assert_allclose(got.reshape(2, 3, d), want, rtol=1e-4, atol=1e-4)


def test_weight_dropout_masks_elements_of_the_assembled_update():
  """Train mode: x @ (M * H) / (1 - p) with one 0/1 matrix M shared by every token."""
  d, p = 16, 0.5
  spec = KAdaptationSpec(n=4, dropout=p, bias=False, scale=1.0, targets=("query",))
  h, params = _harness_params(spec, d)
  r, f = params["kadaptation_rules"], params["kadaptation_query"]
  full = _kron_reference(r["query_left"], r["query_right"], f["u"], f["v"])
  eye = np.eye(d, dtype=np.float32)[None]                # token j reads row j of the matrix
  np.testing.assert_allclose(h.apply({"params": params}, eye).reshape(d, d), full,
                             rtol=1e-4, atol=1e-4)
  dropped = h.apply({"params": params}, eye, train=True,
                    rngs={"dropout": jax.random.key(3)}).reshape(d, d)
  kept = np.isclose(dropped, full / (1 - p), rtol=1e-4, atol=1e-5)
  zero = dropped == 0
  assert np.all(kept | zero)
  assert 0.35 < zero.mean() < 0.65


def test_default_forward_never_builds_the_d_by_d_matrix():
  d = 24

  def shapes(spec, train):
    h = _Harness(spec)
    params = h.init(jax.random.key(0), jnp.zeros((1, 1, d)))
    jaxpr = jax.make_jaxpr(lambda x: h.apply(params, x, train=train,
                                             rngs={"dropout": jax.random.key(0)}))(
                                                 jnp.zeros((2, 5, d)))
    return {tuple(v.aval.shape) for e in jaxpr.jaxpr.eqns for v in e.outvars}

  assert (d, d) not in shapes(KAdaptationSpec(n=4), train=True)
  assert (d, d) not in shapes(KAdaptationSpec(n=4, dropout=0.5), train=False)
  assert (d, d) in shapes(KAdaptationSpec(n=4, dropout=0.5), train=True)


# ----------------------------------------------------------------------------- init and gradients


@pytest.mark.parametrize("model_name", ["ViT-micro", "Swin-tiny"])
def test_zero_update_at_init(model_name):
  spec = KAdaptationSpec(n=8)
  model = create_model(model_name, 5, extensions=(spec,))
  params = checkpoints.init_params(model, rng=jax.random.key(4))
  plain = create_model(model_name, 5)
  backbone = partition.unflatten({k: v for k, v in partition.flatten(params).items()
                                  if not is_kadaptation(k)})
  np.testing.assert_allclose(_logits(model, params), _logits(plain, backbone), atol=1e-6)
  flat = partition.flatten(params)
  assert all(np.any(flat[k] != 0) for k in flat if k.endswith("/u"))      # u random
  assert all(np.all(flat[k] == 0) for k in flat if k.endswith("/v"))      # v zero


def _one_engine_step(tiny_config, init):
  """(model, params after one Trainer step, a batch) for KAdaptation with `init`."""
  c = tiny_config
  c.method.name = "kadaptation"
  c.kadaptation.n = 8
  c.kadaptation.init = init
  task = build_task(c.data, image_size=32)
  method = get_method(c)
  model = create_model("ViT-micro", task.num_classes, extensions=method.extensions())
  # A trained-looking backbone and head (a zero head passes no gradient back), the
  # method's own init for its factors.
  flat = partition.flatten(_perturbed(model, seed=5))
  init = partition.flatten(checkpoints.init_params(model, rng=jax.random.key(5)))
  params = partition.unflatten({k: init[k] if is_kadaptation(k) else v
                                for k, v in flat.items()})
  mask = method.trainable_mask(MethodContext(c, model, params))
  trainer = Trainer(model, params, mask, c.optim, total_steps=10, steps_per_epoch=4)
  batch = next(epoch_batches(task.train, 16, seed=0, epoch=0))
  images, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  before = _grads(model, params, images, labels)
  state, _ = trainer.train_step(trainer.initial_state(), batch)
  return trainer.full_params(state), before, _grads(model, trainer.full_params(state),
                                                    images, labels)


def _factor_keys(flat):
  keys = [k for k in flat if is_kadaptation(k)]
  groups = {"u": [k for k in keys if k.endswith("/u")],
            "v": [k for k in keys if k.endswith("/v")],
            "A": [k for k in keys if k.startswith("kadaptation_rules/")],
            "bias": [k for k in keys if k.endswith("kadaptation_bias")]}
  assert all(groups.values()) and sum(map(len, groups.values())) == len(keys)
  assert len(groups["A"]) == 4 and len(groups["u"]) == 4 and len(groups["bias"]) == 2
  return groups


def test_lora_init_every_factor_gets_gradient_after_one_step(tiny_config):
  _, before, after = _one_engine_step(tiny_config, "lora")
  g = _factor_keys(before)
  norm = lambda grads, k: float(np.abs(grads[k]).max())  # noqa: E731
  # Step 0: v = 0, so dL/du (through v) and dL/dA (through B = u v) vanish; dL/dv does not.
  assert all(norm(before, k) == 0 for k in g["u"] + g["A"])
  assert all(norm(before, k) > 0 for k in g["v"] + g["bias"])
  # After one optimizer step v != 0 and every declared factor gets a gradient.
  for group, keys in g.items():
    assert all(norm(after, k) > 0 for k in keys), (group, [norm(after, k) for k in keys])


def test_code_zero_init_trains_only_the_bias(tiny_config):
  params, _, after = _one_engine_step(tiny_config, "code_zero")
  g = _factor_keys(after)
  flat = partition.flatten(params)
  for k in g["u"] + g["v"]:
    assert np.all(flat[k] == 0), k                       # still exactly zero after a step
  for k in g["u"] + g["v"] + g["A"]:
    assert np.all(after[k] == 0), k                      # and they never get a gradient
  assert all(np.abs(after[k]).max() > 0 for k in g["bias"])


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize("share,bias", [(False, True), (True, True), (False, False)])
def test_merge_equals_unmerged_vit(tmp_path, share, bias):
  spec = KAdaptationSpec(n=8, rank=2, rule_rank=2, scale=7.0, bias=bias,
                         share_qv_fast_weights=share)
  model = create_model("ViT-micro", 5, extensions=(spec,))
  params = _perturbed(model, seed=3, scale=0.2)
  want = _logits(model, params)
  path = tmp_path / "merged.npz"
  artifacts.export_merged(str(path), model, params)
  assert not any("kadaptation" in k for k in np.load(path, allow_pickle=False).files)
  plain = create_model("ViT-micro", 5)
  loaded = checkpoints.load_pretrained(str(path), plain)
  loaded["head"] = params["head"]
  assert np.abs(want - _logits(plain, _strip(params))).max() > 1e-2   # a real update
  np.testing.assert_allclose(_logits(plain, loaded), want, rtol=1e-4, atol=1e-4)


def _strip(params):
  return partition.unflatten({k: v for k, v in partition.flatten(params).items()
                              if not is_kadaptation(k)})


def test_merge_equals_unmerged_swin():
  spec = KAdaptationSpec(n=8, targets=("query", "key", "value"))
  model = create_model("Swin-tiny", 5, extensions=(spec,))
  params = _perturbed(model, seed=6, scale=0.2)
  plain, merged = artifacts.merge_extensions(model, params)
  want = _logits(model, params)
  assert np.abs(want - _logits(plain, _strip(params))).max() > 1e-2
  np.testing.assert_allclose(_logits(plain, merged), want, rtol=1e-4, atol=1e-4)
  assert not any(is_kadaptation(k) for k in partition.flatten(merged))


# ----------------------------------------------------------------------------- counts


def _adapter_count(model_name, spec, size):
  model = create_model(model_name, 10, extensions=(spec,))
  shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, size, size, 3))),
                          jax.random.key(0))["params"]
  return sum(int(np.prod(v.shape)) for k, v in partition.flatten(shapes).items()
             if is_kadaptation(k))


def test_released_code_parameter_counts_on_vit_b16():
  # methods.md §7: 12 x (4 x 768 + 768) + 2 x (32 x 32 + 32 x 32) = 50,176;
  # without the (unused) v fast weights 12 x (2 x 768 + 768) + 4,096 = 31,744.
  spec = KAdaptationSpec(n=32, rank=1, rule_rank=1)
  assert _adapter_count("ViT-B_16", spec, 224) == 50_176
  shared = KAdaptationSpec(n=32, share_qv_fast_weights=True)
  assert _adapter_count("ViT-B_16", shared, 224) == 31_744
  assert count_parameters([768] * 12, n=32) == 50_176
  assert count_parameters([768] * 12, n=32, share_qv_fast_weights=True) == 31_744


def test_swin_t_count_and_shapes():
  spec = KAdaptationSpec(n=32, rank=2)
  widths = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
  assert _adapter_count("Swin-T", spec, 224) == count_parameters(widths, n=32, rank=2)
  model = create_model("Swin-tiny", 3, extensions=(KAdaptationSpec(n=8),))
  flat = partition.flatten(checkpoints.init_params(model))
  assert flat["kadaptation_rules/query_left"].shape == (8, 8, 1)   # one set, all stages
  assert not any(k.endswith("_left") and not k.startswith("kadaptation_rules") for k in flat)
  assert flat["layers_0/blocks_1/attn/kadaptation_value/u"].shape == (8, 4, 1)   # 32 / 8
  assert flat["layers_1/blocks_0/attn/kadaptation_value/v"].shape == (8, 1, 8)   # 64 / 8
  assert flat["layers_1/blocks_0/attn/kadaptation_bias"].shape == (4, 16)


# ----------------------------------------------------------------------------- engine runs


def test_learns_through_the_engine_and_stores_exactly_the_trained_values(tiny_config,
                                                                         tmp_path):
  c = tiny_config
  c.method.name = "kadaptation"
  c.kadaptation.n = 8
  c.kadaptation.scale = 16.0
  c.data.num_train = 96
  c.train.batch_size = 32
  c.train.epochs = 8
  c.optim.lr = 1e-2
  c.train.eval_every_epochs = 8
  results = experiment.run(c, str(tmp_path), quiet=True)
  loss = read_metric(tmp_path, "train/loss")
  assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:2]), loss
  assert results["trainable_params_no_head"] == count_parameters([32, 32], n=8)

  stored = np.load(tmp_path / "adapter.npz", allow_pickle=False)
  assert sorted(stored.files) == sorted(
      k for k in partition.flatten(_load_params(tmp_path)) if is_kadaptation(k)
      or k.startswith("head/"))
  _, variables = artifacts.load_adapter(str(tmp_path))
  trained = partition.flatten(variables["params"])
  fresh = partition.flatten(checkpoints.init_params(
      create_model("ViT-micro", 4, extensions=get_method(c).extensions()),
      rng=jax.random.key(c.seed)))
  for k in stored.files:
    np.testing.assert_array_equal(stored[k], trained[k])
    if k.endswith("/v") or k.endswith("kadaptation_bias"):
      assert not np.array_equal(stored[k], fresh[k]), f"{k} did not train"
  assert sum(stored[k].size for k in stored.files) == results["trainable_params"]


def _load_params(workdir):
  return artifacts.load_adapter(str(workdir))[1]["params"]


def test_swin_trains(tiny_config, tmp_path):
  c = tiny_config
  c.model.name = "Swin-tiny"
  c.method.name = "kadaptation"
  c.kadaptation.n = 8
  c.train.epochs = 1
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert results["trainable_params_no_head"] == count_parameters([32, 32, 64, 64], n=8)
  assert np.isfinite(results["test_top1"])


def test_run_py_merged_export_matches_the_adapter(tmp_path):
  work = tmp_path / "w"
  env = {**os.environ, "HEAT_JAX_NO_TENSORBOARD": "1"}
  proc = subprocess.run(
      [sys.executable, "run.py", "--config=configs/smoke.py:method=kadaptation",
       f"--workdir={work}", "--config.train.export_merged=True",
       "--config.train.progress=False", "--config.kadaptation.scale=8.0"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  model, variables = artifacts.load_adapter(str(work))
  plain = model.clone(extensions=())
  params = checkpoints.load_pretrained(str(work / "merged.npz"), plain)
  params["head"] = variables["params"]["head"]
  np.testing.assert_allclose(_logits(plain, params), _logits(model, variables["params"]),
                             rtol=1e-4, atol=1e-4)
  results = json.loads((work / "results.json").read_text())
  assert results["trainable_params_no_head"] == count_parameters([32, 32], n=32)


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("model,field,value,match", [
    ("ViT-micro", "n", 5, "n=5 does not divide the width 32"),
    ("Swin-tiny", "n", 64, "n=64 does not divide the width 32 of Swin-tiny"),
    ("ViT-micro", "targets", "query,out", "targets='query,out'"),
    ("ViT-micro", "targets", "", "targets=''"),
    ("ViT-micro", "rank", 0, "rank must be an integer >= 1"),
    ("ViT-micro", "rule_rank", 0, "rule_rank must be an integer >= 1"),
    ("ViT-micro", "dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("ViT-micro", "dropout", -0.1, r"dropout must be in \[0, 1\)"),
    ("ViT-micro", "scale", 0.0, "scale must be > 0"),
    ("ViT-micro", "init", "glorot", "init='glorot' is not one of lora, code_zero"),
])
def test_bad_options_fail_before_training(tiny_config, tmp_path, model, field, value, match):
  c = tiny_config
  c.model.name = model
  c.method.name = "kadaptation"
  c.kadaptation[field] = value
  with pytest.raises(ConfigError, match=match) as e:
    experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert "\n" not in str(e.value) and f"config.kadaptation.{field}" in str(e.value)
  assert not (tmp_path / "w").exists()


def test_share_qv_needs_query_and_value(tiny_config):
  c = tiny_config
  c.method.name = "kadaptation"
  c.kadaptation.share_qv_fast_weights = True
  c.kadaptation.targets = "query,key"
  with pytest.raises(ConfigError, match="share_qv_fast_weights needs both query and value"):
    experiment.validate(c)


# ----------------------------------------------------------------------------- integration


def test_demo_variant_only_when_asked():
  from configs import demo
  from heat_jax import study
  assert "kadaptation" not in demo.get_config().study.variants.split(",")
  config = demo.get_config("variants=heat+kadaptation")
  _, variants = study.validate(config)
  assert variants == ["heat", "kadaptation"]
  c = study.variant_config(config, "texture", "kadaptation", 0)
  assert c.method.name == "kadaptation"
  assert isinstance(experiment.validate(c).extensions()[0], KAdaptationSpec)


def test_vtab_config_and_sweep_build_and_fail_fast_offline(tmp_path):
  from configs import vtab
  from heat_jax import sweep
  from heat_jax.errors import UserError
  jobs = sweep.plan(["dtd"], ["kadaptation"], [0], tmp_path / "sweep")
  assert [j.config.method.name for j in jobs] == ["kadaptation"]
  c = vtab.get_config(f"dtd,method=kadaptation,data_dir={tmp_path / 'no_data'}")
  spec = experiment.validate(c).extensions()[0]
  assert spec.n == 32 and spec.targets == ("query", "value")
  with pytest.raises(UserError, match="not prepared") as e:
    experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert "\n" not in e.value.one_line()
