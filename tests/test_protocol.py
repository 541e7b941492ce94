"""The protocol's bookkeeping: no "val" number on training images, no epoch picked on
test, and the data layer's held-out check of split strings."""

import json
import os

import pytest

from configs import smoke
from heat_jax import experiment
from heat_jax.data import build_task
from heat_jax.data.splits import splits_overlap
from heat_jax.data.vtab_tasks import TASKS


@pytest.mark.parametrize("first,second,overlap", [
    ("train[:800]+validation[:200]", "validation[:200]", True),   # VTAB final, dtd
    ("train[:800]", "validation[:200]", False),                   # VTAB tuning, dtd
    ("train[:800]+train[45000:45200]", "train[45000:45200]", True),
    ("train[:800]", "train[45000:45200]", False),                 # cifar tuning
    ("train800val200", "val200", True), ("train800", "val200", False),   # folder names
    ("train1[:800]+val1[:200]", "val1[:200]", True),
    ("train[:50%]", "train[50%:]", False), ("train[:50%]", "train[49%:]", True),
    ("train", "train[10:20]", True), ("train[:800]", "train[-200:]", True),   # unknown size
    ("train[:800]", "", False),
])
def test_split_overlap(first, second, overlap):
  assert splits_overlap(first, second) == overlap
  assert splits_overlap(second, first) == overlap


@pytest.mark.parametrize("task", list(TASKS))
def test_every_vtab_tuning_split_is_held_out_and_every_final_one_is_not(task):
  t = TASKS[task]
  assert not splits_overlap(t.train800, t.val200)
  assert splits_overlap(t.train800val200, t.val200)


def _config(train_split, epochs=1):
  c = smoke.get_config("method=linear")
  c.data.train_split = train_split
  c.train.epochs = epochs
  c.train.progress = False
  return c


def test_synthetic_task_reports_whether_val_is_held_out():
  for split, held in (("train800val200", False), ("train800", True)):
    c = _config(split)
    task = build_task(c.data, image_size=c.model.image_size)
    assert task.val is not None
    assert (task.held_out_val() is not None) == held, split


def _metric_keys(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {k for line in f for k in json.loads(line)}


def test_a_final_run_writes_no_val_number_and_selects_no_epoch(tmp_path):
  r = experiment.run(_config("train800val200", epochs=2), str(tmp_path / "final"))
  assert r["val_top1"] is None and r["val_held_out"] is False
  assert all("val_top1" not in h for h in r["history"])
  assert "eval/val_top1" not in _metric_keys(tmp_path / "final")
  assert not {"best_test_top1", "best_epoch", "val_selected_test_top1"} & set(r)
  assert r["selection"] == "final epoch" and r["test_top1"] == r["history"][-1]["test_top1"]
  saved = json.loads((tmp_path / "final" / "results.json").read_text())
  assert saved["val_top1"] is None and "best_test_top1" not in saved


def test_a_tuning_run_reports_val_on_the_held_out_split(tmp_path):
  r = experiment.run(_config("train800"), str(tmp_path / "tune"))
  assert r["val_held_out"] is True and r["val_top1"] == r["history"][-1]["val_top1"]
  assert "eval/val_top1" in _metric_keys(tmp_path / "tune")
