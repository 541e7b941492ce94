"""Sweep bookkeeping and the results table, on hand-written results.json files."""

import csv
import json

import numpy as np
import pytest

from heat_jax import sweep
from heat_jax.errors import ConfigError, DataError

NATURAL = ["cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn",
           "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
              "smallnorb_azi", "smallnorb_ele"]
# Full fine-tuning of ViT-B/16, per task (VPT paper, as quoted by the PETL-ViT README);
# vtab.md section 3 gives mean-19 = 65.57 and group mean = 68.96 for them.
FULL_FT = [68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8, 79.7, 95.7, 84.2, 73.9,
           56.3, 58.6, 41.7, 65.5, 57.5, 46.7, 25.7, 29.1]


def write(root, task, method, seed, top1, best=None, val=None, params=1000, no_head=100):
  d = root / task / method / f"seed{seed}"
  d.mkdir(parents=True, exist_ok=True)
  (d / "results.json").write_text(json.dumps({
      "task": task, "method": method, "seed": seed, "test_top1": top1,
      "best_test_top1": top1 if best is None else best, "val_top1": val,
      "trainable_params": params, "trainable_params_no_head": no_head, "wall_time_s": 1.0}))


def read_csv(path):
  with open(path) as f:
    return {(r["method"], r["task"]): r for r in csv.DictReader(f)}


def test_partial_results_table(tmp_path):
  write(tmp_path, "dtd", "heat", 0, 0.70, best=0.75)
  write(tmp_path, "dtd", "heat", 1, 0.72, best=0.74)
  write(tmp_path, "svhn", "heat", 0, 0.90)
  write(tmp_path, "svhn", "heat", 1, 0.92)
  write(tmp_path, "eurosat", "heat", 0, 0.95)
  write(tmp_path, "eurosat", "heat", 1, 0.97)
  write(tmp_path, "clevr_count", "heat", 0, 0.60)
  write(tmp_path, "clevr_count", "heat", 1, 0.64)
  write(tmp_path, "dtd", "lora", 0, 0.50, params=3000, no_head=2000)
  summary = sweep.collect(tmp_path)

  heat = summary["heat"]["metrics"]["test_top1"]
  assert heat["per_task"]["dtd"].mean == pytest.approx(71.0)
  assert heat["per_task"]["dtd"].std == pytest.approx(np.std([70, 72], ddof=1))
  means = {"dtd": 71.0, "svhn": 91.0, "eurosat": 96.0, "clevr_count": 62.0}
  assert heat["mean19"].mean == pytest.approx(np.mean(list(means.values())))
  group = np.mean([(71.0 + 91.0) / 2, 96.0, 62.0])
  assert heat["group_mean"].mean == pytest.approx(group)
  # std of the per-seed aggregates (seed 0: 70, 90, 95, 60; seed 1: 72, 92, 97, 64)
  assert heat["mean19"].std == pytest.approx(np.std([np.mean([70, 90, 95, 60]),
                                                     np.mean([72, 92, 97, 64])], ddof=1))
  assert summary["heat"]["metrics"]["best_test_top1"]["per_task"]["dtd"].mean == (
      pytest.approx(74.5))
  assert "val_top1" not in summary["heat"]["metrics"]

  md = (tmp_path / "results.md").read_text()
  assert "mean of 4/19 tasks" in md and "group mean (N 2/7, S 1/4, T 1/8)" in md
  heat_row = next(l for l in md.splitlines() if l.startswith("| heat |"))
  cells = [c.strip() for c in heat_row.strip("|").split("|")]
  assert len(cells) == 3 + 19 + 3 + 2
  assert cells[3 + 2] == "71.00 ± 1.41"          # dtd is the third task
  assert cells[3] == "-"                          # cifar100 missing
  assert cells.count("-") == 15
  assert cells[-2:] == ["80.00 ± 1.77 (4/19)", "79.67 ± 1.89 (4/19)"]
  assert cells[-5] == "81.00 ± 1.41 (2/7)"
  lora_row = next(l for l in md.splitlines() if l.startswith("| lora |"))
  assert "50.00" in lora_row and "0.003" in lora_row   # single seed: no ±

  rows = read_csv(tmp_path / "results.csv")
  assert float(rows[("heat", "mean19")]["test_top1_pct_mean"]) == pytest.approx(80.0)
  assert rows[("heat", "mean19")]["num_tasks"] == "4"
  assert float(rows[("heat", "group_mean")]["test_top1_pct_mean"]) == pytest.approx(group)
  assert rows[("heat", "dtd")]["test_top1_num_seeds"] == "2"
  assert rows[("lora", "dtd")]["trainable_params_no_head"] == "2000"
  assert ("heat", "cifar100") not in rows


def test_full_table_reproduces_the_worked_example(tmp_path):
  tasks = NATURAL + SPECIALIZED + STRUCTURED
  for task, acc in zip(tasks, FULL_FT):
    write(tmp_path, task, "full", 42, acc / 100)
  summary = sweep.collect(tmp_path)
  m = summary["full"]["metrics"]["test_top1"]
  assert m["mean19"].mean == pytest.approx(np.mean(FULL_FT))
  assert m["mean19"].mean == pytest.approx(65.57, abs=0.005)
  groups = [np.mean(FULL_FT[:7]), np.mean(FULL_FT[7:11]), np.mean(FULL_FT[11:])]
  assert m["group_mean"].mean == pytest.approx(np.mean(groups))
  assert m["group_mean"].mean == pytest.approx(68.96, abs=0.02)
  assert m["groups"]["natural"].mean == pytest.approx(75.88, abs=0.01)
  assert m["groups"]["structured"].mean == pytest.approx(47.64, abs=0.01)
  md = (tmp_path / "results.md").read_text()
  assert "/19" not in md and "- full:" not in md and "| 65.57 |" in md
  assert m["mean19"].std is None


def test_unknown_tasks_are_shown_but_not_averaged(tmp_path):
  write(tmp_path, "dtd", "heat", 0, 0.5)
  write(tmp_path, "toy", "heat", 0, 1.0)
  summary = sweep.collect(tmp_path)
  assert summary["heat"]["metrics"]["test_top1"]["mean19"].mean == pytest.approx(50.0)
  assert "toy" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("payload,match", [
    ("{not json", "cannot read"),
    (json.dumps({"task": "dtd", "method": "heat", "seed": 0}), "lacks test_top1"),
    (json.dumps({"task": "dtd", "method": "heat", "seed": 0, "test_top1": 71.0}),
     "not a fraction"),
])
def test_bad_results_files(tmp_path, payload, match):
  d = tmp_path / "dtd" / "heat" / "seed0"
  d.mkdir(parents=True)
  (d / "results.json").write_text(payload)
  with pytest.raises(DataError, match=match):
    sweep.collect(tmp_path)


def test_collect_without_results(tmp_path):
  with pytest.raises(DataError, match="no results.json"):
    sweep.collect(tmp_path)


def test_run_sweep_layout_skip_and_failures(tmp_path):
  calls = []

  def runner(config, workdir):
    calls.append((config.data.task, config.method.name, config.seed, config.lora.rank, workdir))
    if config.data.task == "svhn" and config.method.name == "lora":
      raise RuntimeError("boom")
    write(tmp_path, config.data.task, config.method.name, config.seed, 0.5)

  failed = sweep.run_sweep(["dtd", "svhn"], ["heat", "lora"], [0, 1], tmp_path,
                           config_args="rank=4", runner=runner)
  assert failed == ["svhn/lora/seed0", "svhn/lora/seed1"]
  assert len(calls) == 8 and all(c[3] == 4 for c in calls)
  assert calls[0][4] == str(tmp_path / "dtd" / "heat" / "seed0")
  calls.clear()
  sweep.run_sweep(["dtd", "svhn"], ["heat", "lora"], [0, 1], tmp_path, runner=runner)
  assert [c[:3] for c in calls] == [("svhn", "lora", 0), ("svhn", "lora", 1)]
  with pytest.raises(ConfigError, match="must not set method"):
    sweep.run_sweep(["dtd"], ["heat"], [0], tmp_path, config_args="method=lora", runner=runner)
  with pytest.raises(ConfigError, match="unknown config argument"):
    sweep.run_sweep(["dtd"], ["heat"], [0], tmp_path, config_args="rnk=4", runner=runner)


def test_cli_parsing():
  assert sweep.parse_tasks("all") == NATURAL + SPECIALIZED + STRUCTURED
  assert sweep.parse_tasks("specialized,dtd") == SPECIALIZED + ["dtd"]
  assert sweep.parse_seeds("0, 1,2") == [0, 1, 2]
  with pytest.raises(ConfigError, match="unknown task 'dtdd'"):
    sweep.parse_tasks("dtdd")
  with pytest.raises(ConfigError):
    sweep.parse_seeds("a")


def test_cli_collect_only(tmp_path, capsys):
  write(tmp_path, "dtd", "heat", 0, 0.5)
  assert sweep.main(["--workdir", str(tmp_path), "--collect_only"]) == 0
  assert (tmp_path / "results.csv").exists()
  assert sweep.main(["--workdir", str(tmp_path / "empty"), "--collect_only"]) == 2
  assert "no results.json" in capsys.readouterr().err
