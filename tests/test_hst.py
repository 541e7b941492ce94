"""HST: exact parameter count, resize equivalence, batch statistics, the frozen set,
resume, the adapter, option checks and the config / sweep / study integration."""

import functools
import json
import logging
from collections import Counter

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.common import base_config
from heat_jax import artifacts, experiment
from heat_jax.data import build_task
from heat_jax.errors import ConfigError, UserError
from heat_jax.methods import get_method
from heat_jax.methods.hst import Hst, HstSpec, resolve
from heat_jax.models import create_model
from heat_jax.models.apply import apply_model, split_variables
from heat_jax.training import partition
from heat_jax.training.metrics import read_metric

# ----------------------------------------------------------------------------- counts


def hand_count(widths, depths, hidden, layers, classes):
  """HST's parameters by part, from the architecture (methods.md §8), not the code."""
  w = widths
  def block(d):  # LN, q/k/v/out with bias, LN, MLP 4x
    return 2 * d + 4 * (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
  return {
      # conv 3x3 no bias, BN affine, conv 2x2 + bias, LN
      "stem": 27 * w[0] + 2 * w[0] + (4 * w[0] * w[0] + w[0]) + 2 * w[0],
      "stage embeds": sum(9 * w[s - 1] * w[s] + w[s] + 2 * w[s] for s in range(1, len(w))),
      "side blocks": sum(n * block(d) for n, d in zip(depths, w)),
      "stage LNs": sum(2 * d for d in w),
      "T-Bridges": sum(hidden * d + d for d in w),
      "meta LNs": sum(n * 2 * d for n, d in zip(depths, w)),
      "meta tokens": layers * hidden,
      "backbone LNs": layers * 4 * hidden,
      "head": w[-1] * classes + classes,
  }


def code_count(params):
  """The same parts, read from a parameter tree by name."""
  parts = Counter()
  for key, value in partition.flatten(params).items():
    n = int(np.prod(np.shape(value)))
    p = key.split("/")
    if p[0] == "hst_side":
      part = {"stem": "stem", "embed": "stage embeds", "block": "side blocks",
              "norm": "stage LNs", "bridge": "T-Bridges", "meta": "meta LNs"}[
                  p[1].split("_")[0]]
      parts[part] += n
    elif p[0] == "hst_meta":
      parts["meta tokens"] += n
    elif p[0] == "head":
      parts["head"] += n
    elif "/LayerNorm_" in key and "encoderblock_" in key:
      parts["backbone LNs"] += n
  return dict(parts)


def _hst_config(model="ViT-B_16", image_size=224, **hst):
  c = base_config()
  c.method.name = "hst"
  c.model.name = model
  c.model.image_size = image_size
  for k, v in hst.items():
    c.hst[k] = v
  return c


def test_vit_b16_parameter_breakdown_matches_the_hand_count():
  classes = 100
  method = get_method(_hst_config())
  model = create_model("ViT-B_16", classes, extensions=method.extensions())
  shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 224, 224, 3))),
                          jax.random.key(0))
  want = hand_count((32, 48, 64, 72), (3, 3, 3, 3), 768, 12, classes)
  assert code_count(shapes["params"]) == want
  # The reference recomputation (methods.md §8): 764,840 + 73 C.
  assert sum(want.values()) == 764_840 + 73 * classes
  assert want["stem"] == 5_120 and want["side blocks"] == 462_312
  # The method's mask trains exactly these (not encoder_norm, not the backbone).
  from heat_jax.methods.base import MethodContext
  mask = method.trainable_mask(MethodContext(config=method.config, model=model,
                                             params=shapes["params"]))
  assert partition.count(shapes["params"], mask) == 764_840 + 73 * classes
  # BatchNorm statistics are state, not parameters: stem BN and head BN.
  stats = partition.flatten(shapes["batch_stats"])
  assert {k: v.shape for k, v in stats.items()} == {
      "hst_side/stem/bn/mean": (32,), "hst_side/stem/bn/var": (32,),
      "hst_side/fc_norm/mean": (72,), "hst_side/fc_norm/var": (72,)}


# ----------------------------------------------------------------------------- resize


def _half_pixel_bilinear(x, out_h, out_w):
  """torch F.interpolate(bilinear, align_corners=False) of x [H, W, C] in numpy."""
  def weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m
  return np.einsum("ph,hwc,qw->pqc", weights(x.shape[0], out_h), x,
                   weights(x.shape[1], out_w))


SIZES = [((14, 14), (56, 56)), ((14, 14), (28, 28)), ((14, 14), (14, 14)),
         ((14, 14), (7, 7)), ((4, 4), (8, 8)), ((4, 4), (2, 2)), ((4, 4), (1, 1)),
         ((7, 7), (4, 4)), ((5, 3), (3, 7))]


@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_is_half_pixel_bilinear_and_commutes_with_the_bridge(src, dst):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((*src, 6)).astype(np.float32)
  got = np.asarray(jax.image.resize(x[None], (1, *dst, 6), "bilinear", antialias=False))[0]
  np.testing.assert_allclose(got, _half_pixel_bilinear(x, *dst), atol=1e-5)
  # Project (T-Bridge with bias) then resize == resize then project.
  w, b = rng.standard_normal((6, 3)), rng.standard_normal(3)
  first = np.asarray(jax.image.resize((x @ w + b)[None], (1, *dst, 3), "bilinear",
                                      antialias=False))[0]
  np.testing.assert_allclose(first, _half_pixel_bilinear(x, *dst) @ w + b, atol=1e-4)


def test_resize_matches_torch_interpolate():
  torch = pytest.importorskip("torch", reason="optional cross-check against torch")
  rng = np.random.default_rng(1)
  for src, dst in SIZES:
    x = rng.standard_normal((*src, 4)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(2, 0, 1)[None], size=dst, mode="bilinear",
        align_corners=False)[0].permute(1, 2, 0).numpy()
    got = np.asarray(jax.image.resize(x[None], (1, *dst, 4), "bilinear",
                                      antialias=False))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def micro():
  """ViT-micro + a small HST, its variables, images and a jitted `apply_model`."""
  spec = HstSpec(widths=(8, 16), heads=(2, 4), stages=(0, 1))
  model = create_model("ViT-micro", 3, extensions=(spec,))
  images = np.random.default_rng(0).standard_normal((6, 32, 32, 3)).astype(np.float32)
  params, state = split_variables(jax.device_get(
      jax.jit(model.init)(jax.random.key(0), images)))
  apply = jax.jit(functools.partial(apply_model, model), static_argnames=("train",))
  return model, params, state, images, apply


def _with(state, key, delta):
  flat = {k: np.array(v) for k, v in partition.flatten(state).items()}
  flat[key] = flat[key] + delta
  return partition.unflatten(flat)


def test_meta_tokens_are_inserted_replaced_and_used(micro):
  model, params, state, images, apply = micro
  _, blocks = jax.jit(functools.partial(model.apply, return_block_tokens=True))(
      {"params": params, **state}, images)
  assert [b.shape[1] for b in blocks] == [1 + 1 + 16] * 2   # cls, one meta, 4x4 patches
  base = apply(params, state, images)[0]
  for layer in range(2):
    moved = jax.tree.map(np.array, params)
    moved["hst_meta"][layer] += 1.0
    assert not np.allclose(apply(moved, state, images)[0], base), layer


def test_batch_statistics_train_mode_updates_eval_mode_reads(micro):
  model, params, state, images, apply = micro
  logits, same = apply(params, state, images, train=False)
  assert jax.tree.all(jax.tree.map(np.array_equal, same, state))
  for key in ("batch_stats/hst_side/fc_norm/mean", "batch_stats/hst_side/stem/bn/mean"):
    shifted = apply(params, _with(state, key, 0.5), images)[0]
    assert not np.allclose(shifted, logits), key   # eval uses the running averages
  # Train mode normalises with the batch's statistics, whatever is stored...
  t1, new = apply(params, state, images, train=True, rng=jax.random.key(1))
  t2, _ = apply(params, _with(state, "batch_stats/hst_side/fc_norm/mean", 0.5), images,
                train=True, rng=jax.random.key(1))
  np.testing.assert_array_equal(t1, t2)
  # ... and moves the stored ones with torch's momentum 0.1 from (mean 0, var 1).
  _, inter = jax.jit(functools.partial(
      model.apply, train=True, capture_intermediates=True,
      mutable=["intermediates", "batch_stats"]))({"params": params, **state}, images)
  inter = inter["intermediates"]["hst_side"]
  pooled = np.asarray(inter["norm_1"]["__call__"][0]).mean(axis=1)
  conv = np.asarray(inter["stem"]["conv_0"]["__call__"][0]).reshape(-1, 8)
  got = partition.flatten(new)
  for name, x in (("fc_norm", pooled), ("stem/bn", conv)):
    np.testing.assert_allclose(got[f"batch_stats/hst_side/{name}/mean"], 0.1 * x.mean(0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[f"batch_stats/hst_side/{name}/var"],
                               0.9 + 0.1 * x.var(0), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- engine


def _loss_curve(workdir):
  return read_metric(workdir, "train/loss")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """One uninterrupted HST run on the toy task and what it exported (params, state)."""
  c = base_config()      # conftest's tiny_config (function-scoped), for a module fixture
  c.update_from_flattened_dict({
      "method.name": "hst", "model.name": "ViT-micro", "model.pretrained": "",
      "model.image_size": 32, "data.source": "toy", "data.task": "toy",
      "data.num_val": 0, "data.num_test": 37, "train.eval_batch_size": 16,
      "train.progress": False, "train.log_every_steps": 2, "optim.warmup_epochs": 0,
      # side drop path too (auto = the model's): the dropout stream must resume
      "model.drop_path_rate": 0.1, "data.num_train": 96, "train.batch_size": 32,
      "train.epochs": 8, "train.eval_every_epochs": 4,
      "train.checkpoint_every_steps": 10, "optim.lr": 1e-2})
  workdir = tmp_path_factory.mktemp("hst_straight")
  seen = {}
  export = artifacts.export_adapter

  def spy(workdir, params, mask, **kw):
    seen.update(params=params, state=kw["model_state"])
    return export(workdir, params, mask, **kw)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(artifacts, "export_adapter", spy)
    results = experiment.run(c, str(workdir), quiet=True)
  return c, workdir, results, seen


def test_hst_learns_with_exact_counts(straight):
  _, workdir, results, _ = straight
  loss = _loss_curve(workdir)
  assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:2]), loss
  # ViT-micro (D 32, 2 blocks, 32 px) -> 2 stages of 1 block, widths 32, 48; 4 classes.
  want = hand_count((32, 48), (1, 1), 32, 2, 4)
  assert results["trainable_params"] == sum(want.values())
  assert results["trainable_params_no_head"] == sum(want.values()) - want["head"]
  assert results["method_info"]["hst"]["blocks"] == "0,1"


def test_frozen_set_adapter_and_load_adapter(straight):
  c, workdir, results, seen = straight
  # load_adapter: a fresh init from the run's seed with the adapter written in, so its
  # frozen entries are the untouched initial values.
  loaded, variables = artifacts.load_adapter(str(workdir))
  fresh = partition.flatten(variables["params"])
  after = partition.flatten(seen["params"])
  assert set(fresh) == set(after)
  # Frozen set: the backbone is bit-identical except the block LayerNorms, which moved.
  trained = set()
  for key, value in after.items():
    value = np.asarray(value)
    if key.split("/")[0] in ("hst_meta", "hst_side", "head"):
      trained.add(key)
    elif "encoderblock_" in key and "/LayerNorm_" in key:
      assert np.any(value != (1.0 if key.endswith("scale") else 0.0)), f"{key} did not train"
      trained.add(key)
    else:
      assert np.array_equal(value, np.asarray(fresh[key])), f"{key} moved"
  assert any(k.startswith("Transformer/encoder_norm") for k in after)
  assert len(trained) < len(after)

  # adapter.npz: exactly the trained values, plus the batch statistics counted apart.
  meta = json.load(open(workdir / "adapter.json"))
  stored = np.load(workdir / "adapter.npz", allow_pickle=False)
  state_keys = {k for k in stored.files if k.startswith("model_state/")}
  assert set(stored.files) - state_keys == trained
  assert sum(stored[k].size for k in trained) == results["trainable_params"]
  for k in trained:
    np.testing.assert_array_equal(stored[k], after[k])
  flat_state = partition.flatten(seen["state"])
  assert state_keys == {"model_state/" + k for k in flat_state}
  assert meta["num_state_scalars"] == sum(v.size for v in flat_state.values()) == 160
  assert np.abs(flat_state["batch_stats/hst_side/fc_norm/mean"]).max() > 0  # trained

  # The rebuilt model's eval logits equal the run's (its final params and statistics).
  task = build_task(c.data, image_size=32)
  images = next(task.test.batches(16))["image"]
  predict = jax.jit(functools.partial(apply_model, loaded))
  got = predict(variables["params"], {k: v for k, v in variables.items() if k != "params"},
                images)[0]
  np.testing.assert_array_equal(got, predict(seen["params"], seen["state"], images)[0])


def test_resume_restores_batch_stats_bit_identically(straight, tmp_path, interrupted_run, caplog):
  c, workdir, results, _ = straight
  interrupted_run(c, str(tmp_path), at_step=14)
  caplog.set_level(logging.INFO, logger="absl")
  resumed = experiment.run(c, str(tmp_path))
  assert "resumed from step 10" in caplog.text
  assert resumed["test_top1"] == results["test_top1"]
  a = np.load(workdir / "adapter.npz", allow_pickle=False)
  b = np.load(tmp_path / "adapter.npz", allow_pickle=False)
  assert a.files == b.files
  assert any(k.startswith("model_state/batch_stats/") for k in a.files)
  for k in a.files:
    assert np.array_equal(a[k], b[k]), k


def test_smoke_config_runs(tmp_path):
  from configs import smoke
  c = smoke.get_config("method=hst")
  c.train.progress = False
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert results["method"] == "hst" and np.isfinite(results["test_top1"])
  assert (tmp_path / "adapter.npz").exists()


# ----------------------------------------------------------------------------- options


def _auto(**kw):
  return ml_collections.ConfigDict({**Hst.default_config()["hst"].to_dict(), **kw})


@pytest.mark.parametrize("layers,size,widths,depths,maps", [
    (12, 224, (32, 48, 64, 72), (3, 3, 3, 3), ((56, 56), (28, 28), (14, 14), (7, 7))),
    (2, 32, (32, 48), (1, 1), ((8, 8), (4, 4))),                 # ViT-micro
    (4, 32, (32, 48, 64, 72), (1, 1, 1, 1), ((8, 8), (4, 4), (2, 2), (1, 1))),
    (24, 224, (32, 48, 64, 72), (6, 6, 6, 6), ((56, 56), (28, 28), (14, 14), (7, 7))),
    (12, 16, (32, 48, 64), (4, 4, 4), ((4, 4), (2, 2), (1, 1))),  # map reaches 1x1
    (6, 224, (32, 48, 64, 72), (2, 2, 1, 1), ((56, 56), (28, 28), (14, 14), (7, 7))),
])
def test_auto_rule(layers, size, widths, depths, maps):
  lay = resolve(_auto(), num_layers=layers, image_hw=(size, size), model_drop_path=0.1)
  assert (lay.widths, lay.depths, lay.maps) == (widths, depths, maps)
  assert lay.heads == (2, 4, 8, 12)[:len(widths)] and lay.drop_path == 0.1


def test_explicit_options():
  lay = resolve(_auto(blocks="0-3,4-11", drop_path="0.05"), num_layers=12,
                image_hw=(224, 224), model_drop_path=0.1)
  assert lay.widths == (32, 48) and lay.depths == (4, 8) and lay.drop_path == 0.05
  lay = resolve(_auto(widths="16, 24", heads="4,6", depths="5,7"), num_layers=12,
                image_hw=(224, 224), model_drop_path=0.0)
  assert lay.stages == (0,) * 5 + (1,) * 7 and lay.blocks() == "0-4,5-11"


@pytest.mark.parametrize("overrides,match", [
    ({"hst.heads": "2,5"}, "5 heads do not divide the stage-1 width 48"),
    ({"hst.blocks": "0,0"}, "block 0 feeds two side layers"),
    ({"hst.blocks": "1"}, "block 0 feeds no side layer"),
    ({"hst.blocks": "1,0"}, "in order"),
    ({"hst.blocks": "0-2"}, "block 2 does not exist"),
    ({"hst.blocks": "0,x"}, "'x' is not a block or range"),
    ({"hst.blocks": "1-0"}, "range 1-0 is empty"),
    ({"hst.widths": "32,48", "hst.heads": "2"}, "widths has 2, heads has 1 entries"),
    ({"hst.widths": "32,48,64"}, "3 side stages but the model has 2 blocks"),
    ({"hst.widths": "0,8"}, "integers >= 1"),
    ({"hst.widths": "8;16"}, "comma-separated integers"),
    ({"hst.depths": "2,1"}, "covers 3 blocks but the model has 2"),
    ({"model.name": "ViT-tiny", "hst.depths": "1,3", "hst.blocks": "0-1,2-3"},
     "disagrees with config.hst.blocks"),
    ({"model.name": "ViT-B_16", "hst.depths": "2,2,2,2,2,2"}, "widths=auto covers at most 4"),
    ({"hst.drop_path": "1.5"}, r"must be in \[0, 1\)"),
    ({"hst.drop_path": "lots"}, "'auto' or a number"),
    ({"model.name": "Swin-tiny"}, "ViT-only.*use lora or adapter on Swin"),
    ({"train.export_merged": True}, "cannot be folded"),
])
def test_bad_options_fail_with_one_line_before_any_work(tiny_config, tmp_path, overrides,
                                                        match):
  c = tiny_config
  c.method.name = "hst"
  c.update_from_flattened_dict(overrides)
  with pytest.raises(ConfigError, match=match) as info:
    experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- integration


def test_vtab_config_builds_and_fails_fast_offline(tmp_path):
  from configs import vtab
  c = vtab.get_config("dtd,method=hst")
  method = experiment.validate(c)
  assert method.info["hst"]["blocks"] == "0-2,3-5,6-8,9-11"
  empty = tmp_path / "tfds"
  empty.mkdir()
  c.data.data_dir = str(empty)
  with pytest.raises(UserError) as info:
    experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert "\n" not in info.value.one_line() and "dtd" in info.value.one_line()


def test_sweep_and_study_accept_hst(tmp_path):
  from configs import demo
  from heat_jax import study, sweep
  jobs = sweep.plan(["dtd"], ["hst"], [0], tmp_path)
  assert jobs[0].config.method.name == "hst"
  experiment.validate(jobs[0].config)
  assert "hst" not in demo.get_config().study.variants.split(",")
  tasks, variants = study.validate(demo.get_config("variants=lora+hst"))
  assert variants == ["lora", "hst"]
