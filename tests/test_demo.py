"""The offline demo: `configs/demo.py` builds, and a tiny version of the study runs."""

from __future__ import annotations

import json
import os
import logging

import numpy as np
import pytest

from configs import demo
from heat_jax import experiment, study
from heat_jax.data import synthetic
from heat_jax.errors import ConfigError
from heat_jax.models import create_model, head_layout

ALL_VARIANTS = ["heat", "heat_random", "heat_bottom", "lora", "linear", "full"]
# ViT-micro (2 layers x 2 heads) keeps the end-to-end run to seconds.
TINY = "tasks=texture,epochs=1,model=ViT-micro,budget=2,pretrain_steps=10,pretrain_images=640"


def test_demo_config_builds():
  c = demo.get_config()
  assert c.job == "study" and c.study.seeds == 1
  assert c.study.variants.split(",") == ALL_VARIANTS
  tasks = c.study.tasks.split(",")
  assert len(tasks) == 4 and all(t in synthetic.GENERATORS for t in tasks)
  assert c.base.data.source == "synthetic" and c.base.model.image_size == 32
  layout = head_layout(create_model(c.base.model.name, 8))
  assert 1 <= c.base.heat.budget < layout.total_heads
  experiment.validate(c.base)
  three = demo.get_config("seeds=3")
  assert three.study.seeds == 3 and three.study.tasks == c.study.tasks
  picked = demo.get_config("tasks=texture+count,variants=heat+linear,epochs=2")
  assert picked.study.tasks == "texture,count" and picked.study.variants == "heat,linear"
  assert picked.base.train.epochs == 2
  with pytest.raises(ConfigError):
    demo.get_config("no_such_argument=1")


def test_every_variant_validates_and_sets_what_it_names():
  c = demo.get_config("variants=" + "+".join(study.VARIANTS))
  assert study.validate(c)[1] == list(study.VARIANTS)
  rnd = study.variant_config(c, "texture", "heat_rnd_cls_bottom", 2)
  assert (rnd.importance.classifier, rnd.heat.select, rnd.seed) == ("random", "bottom", 2)
  assert study.variant_config(c, "texture", "heat", 0).importance.classifier == "probe"
  assert study.variant_config(c, "texture", "heat_probe_init", 0).importance.keep_probe


def test_comparison_lines_count_wins_and_mean_gaps():
  rows = [{"task": t, "variant": v, "seed": s, "test_top1": acc}
          for t, accs in (("a", {"heat": (0.5, 0.7), "heat_random": (0.4, 0.4)}),
                          ("b", {"heat": (0.2, 0.2), "heat_random": (0.3, 0.3)}))
          for v, values in accs.items() for s, acc in enumerate(values)]
  lines = study.compare_controls(rows, ["a", "b"])
  # a: 0.6 vs 0.4 (+20), b: 0.2 vs 0.3 (-10): mean +5; pairs that did not run are absent.
  assert lines == ["heat > heat_random on 1 of 2 tasks (mean +5.0 points; probe-scored "
                   "top heads vs random heads): a"]


def test_unknown_variant_fails_before_any_work(tmp_path):
  c = demo.get_config("variants=heat+nonsense")
  with pytest.raises(ConfigError, match="nonsense"):
    study.run(c, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_tiny_study_end_to_end(tmp_path, monkeypatch, caplog, capsys):
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  config = demo.get_config(TINY)
  config.study.compilation_cache = False   # keep the test process's jax config as is
  workdir = tmp_path / "wd"
  caplog.set_level(logging.INFO, logger="absl")
  from heat_jax import importance
  scored, compute_tis = [], importance.compute_tis
  monkeypatch.setattr(importance, "compute_tis",
                      lambda *a, **k: scored.append(1) or compute_tis(*a, **k))
  rows = study.run(config, str(workdir))
  assert "pretraining the demo backbone" in caplog.text and "NOT a VTAB result" in caplog.text
  printed = capsys.readouterr().out   # the table, on stdout

  assert [r["variant"] for r in rows] == ALL_VARIANTS
  assert all(0.0 <= r["test_top1"] <= 1.0 for r in rows)
  table = (workdir / "results.md").read_text()
  assert "NOT a VTAB result" in table
  rows_md = [line for line in table.splitlines() if line.startswith("|")]
  assert len(rows_md) == 2 + len(ALL_VARIANTS) and all(line in printed for line in rows_md)
  for variant in ALL_VARIANTS:
    assert f"| {variant} |" in table
  assert json.loads((workdir / "results.json").read_text()) == rows

  # The three HEAT variants: same budget, same trainable parameters, other heads.
  by = {r["variant"]: r for r in rows}
  heat = [by[v] for v in ("heat", "heat_random", "heat_bottom")]
  assert len({r["trainable_params"] for r in heat}) == 1
  assert len({r["trainable_params_no_head"] for r in heat}) == 1
  assert all(r["heads_selected"] == 2 for r in heat)
  assert 0 < by["heat"]["trainable_params_no_head"] < by["full"]["trainable_params_no_head"]
  assert by["linear"]["trainable_params_no_head"] == 0
  heads = {v: np.load(workdir / "texture" / v / "seed0" / "heads.npy")
           for v in ("heat", "heat_bottom")}
  assert heads["heat"].sum() == heads["heat_bottom"].sum() == 2
  assert not (heads["heat"] & heads["heat_bottom"]).any()   # 2 of 4 heads: disjoint
  assert (workdir / "texture" / "heat" / "seed0" / "importance.png").exists()
  # The three score once (the study's memo): the scores of a run of its own.
  assert len(scored) == 1
  alone = experiment.run(study.variant_config(config, "texture", "heat_bottom", 0,
                                              study.pretrained_backbone(config)),
                         str(tmp_path / "alone"), quiet=True)
  assert alone["method_info"]["heads_selected"] == 2 and len(scored) == 2
  own = np.load(tmp_path / "alone" / "importance.npy")
  for v in ("heat", "heat_random", "heat_bottom"):
    np.testing.assert_array_equal(
        np.load(workdir / "texture" / v / "seed0" / "importance.npy"), own)
  np.testing.assert_array_equal(np.load(tmp_path / "alone" / "heads.npy"),
                                heads["heat_bottom"])

  # A second study reuses the cached backbone and starts its runs afresh, even in a
  # workdir that holds runs of another config.
  again = demo.get_config(TINY.replace("epochs=1", "epochs=2") + ",variants=heat")
  again.study.compilation_cache = False
  caplog.clear()
  rows2 = study.run(again, str(workdir))
  assert "using cached pretrained backbone" in caplog.text
  assert [r["variant"] for r in rows2] == ["heat"]
  result = json.loads((workdir / "texture" / "heat" / "seed0" / "results.json").read_text())
  assert result["config"]["train"]["epochs"] == 2


def test_heat_scores_key_ignores_only_how_heads_are_picked():
  from heat_jax.methods.heat import scores_key
  base = study.variant_config(demo.get_config(), "texture", "heat", 0, "backbone.npz")
  key = scores_key(base)
  for variant in ("heat_random", "heat_bottom"):
    assert scores_key(study.variant_config(demo.get_config(), "texture", variant, 0,
                                           "backbone.npz")) == key
  for field, value in (("data.task", "count"), ("seed", 1),
                       ("importance.classifier", "random"), ("model.pretrained", "other.npz"),
                       ("heat.tune", "lora"), ("importance.num_batches", 3)):
    changed = base.copy_and_resolve_references()
    changed.update_from_flattened_dict({field: value})
    assert scores_key(changed) != key, field
  changed = base.copy_and_resolve_references()
  changed.heat.budget = 3
  assert scores_key(changed) == key


def test_default_demo_uses_the_packaged_backbone(tmp_path, monkeypatch, caplog):
  """The default settings need no pretraining: the asset made for their key is used,
  from an empty cache; other settings are not given it."""
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  config = demo.get_config()
  shipped = study.packaged_backbone(study.backbone_key(config))
  assert shipped is not None, "run tools/make_demo_backbone.py"
  caplog.set_level(logging.INFO, logger="absl")
  assert study.pretrained_backbone(config) == shipped[0]
  assert "using the packaged pretrained backbone" in caplog.text
  assert study.packaged_backbone(study.backbone_key(demo.get_config("pretrain_steps=10"))) is None
  from heat_jax.checkpoints import load_pretrained
  from heat_jax.io_utils import sha256_file
  assert sha256_file(shipped[0]) == shipped[1]["sha256"]
  model = create_model(config.base.model.name, 8)
  params = load_pretrained(shipped[0], model, keep_head=False)   # a ViT-demo checkpoint
  assert params["Transformer"]["encoderblock_3"] and shipped[1]["test_top1"] > 0.5


def test_packaged_backbone_is_what_the_pretraining_makes(tmp_path):
  """The asset holds for this code on any machine: the pretraining's first steps
  (`study.pretraining_trace`) give the losses and parameter norms recorded when the
  asset was made, and the file scores its recorded held-out accuracy on the
  pretraining's test split. (The whole 1500-step command reproduces the file bit for
  bit only on the machine that made it: rounding grows to ~0.4 in the weights on
  another CPU, see tools/make_demo_backbone.py.)"""
  import jax
  from heat_jax.checkpoints import load_pretrained
  from heat_jax.data import build_task
  config = demo.get_config()
  shipped = study.packaged_backbone(study.backbone_key(config))
  assert shipped is not None, "run tools/make_demo_backbone.py"
  path, info = shipped
  recorded = info["trace"]
  trace = study.pretraining_trace(config, str(tmp_path / "trace"))
  assert trace["steps"] == recorded["steps"] == len(trace["loss"]) == study.TRACE_STEPS
  np.testing.assert_allclose(trace["loss"], recorded["loss"], rtol=1e-5,
                             err_msg="the pretraining changed: rerun tools/make_demo_backbone.py")
  names = sorted(recorded["param_norms"])
  assert sorted(trace["param_norms"]) == names
  np.testing.assert_allclose([trace["param_norms"][k] for k in names],
                             [recorded["param_norms"][k] for k in names], rtol=1e-5,
                             atol=1e-5)   # key biases get no gradient: rounding noise

  pre = study.pretraining_config(config)
  task = build_task(pre.data, image_size=pre.model.image_size)
  model = create_model(pre.model.name, task.num_classes)
  params = load_pretrained(path, model)   # the file's own 29-way head
  predict = jax.jit(lambda x: model.apply({"params": params}, x, train=False).argmax(-1))
  right = total = 0
  for batch in task.test.batches(250, shuffle=False, seed=0, epoch=0):
    keep = np.asarray(batch["mask"], bool)
    right += int((np.asarray(predict(batch["image"]))[keep] == batch["label"][keep]).sum())
    total += int(keep.sum())
  assert total == pre.data.num_test
  assert abs(right / total - info["test_top1"]) <= 0.004   # 2 of 500 images


def test_study_pretraining_shows_progress_and_heatmaps_name_their_task(
    tmp_path, monkeypatch, capfd):
  """A pretraining that is not packaged shows a progress bar; each heatmap's title
  starts with its task."""
  from heat_jax import importance
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  titles = []
  plot = importance.plot_importance

  def recording(*args, title=None, **kwargs):
    titles.append(title)
    return plot(*args, title=title, **kwargs)

  monkeypatch.setattr(importance, "plot_importance", recording)
  config = demo.get_config(TINY + ",variants=heat")
  config.study.compilation_cache = False
  study.run(config, str(tmp_path / "wd"))
  err = capfd.readouterr().err
  assert "train: 100%" in err and "10/10" in err    # the pretraining's bar
  assert titles and all(t.startswith("synthetic/texture: TIS") for t in titles), titles


def test_heartbeat_logs_while_a_block_runs(caplog):
  import time
  caplog.set_level(logging.INFO, logger="absl")
  with study.heartbeat("texture heat seed 0", every=0.05):
    time.sleep(0.3)
  beats = [r for r in caplog.records if "texture heat seed 0: still running" in r.getMessage()]
  assert 3 <= len(beats) <= 7
  caplog.clear()
  time.sleep(0.2)   # stopped with the block
  assert "still running" not in caplog.text
