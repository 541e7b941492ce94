"""Sweeps: bookkeeping, devices, the CLI, a real parallel run, and the results table."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heat_jax import sweep, sweep_table
from heat_jax.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

NATURAL = ["cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn",
           "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
              "smallnorb_azi", "smallnorb_ele"]
# Full fine-tuning of ViT-B/16, per task (VPT paper, as quoted by the PETL-ViT README);
# vtab.md section 3 gives mean-19 = 65.57 and group mean = 68.96 for them.
FULL_FT = [68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8, 79.7, 95.7, 84.2, 73.9,
           56.3, 58.6, 41.7, 65.5, 57.5, 46.7, 25.7, 29.1]


def write(root, task, method, seed, top1, val=None, params=1000, no_head=100):
  d = root / task / method / f"seed{seed}"
  d.mkdir(parents=True, exist_ok=True)
  (d / "results.json").write_text(json.dumps({
      "task": task, "method": method, "seed": seed, "test_top1": top1, "val_top1": val,
      "trainable_params": params, "trainable_params_no_head": no_head, "wall_time_s": 1.0}))


def read_csv(path):
  with open(path) as f:
    return {(r["method"], r["task"]): r for r in csv.DictReader(f)}


def test_partial_results_table(tmp_path):
  write(tmp_path, "dtd", "heat", 0, 0.70)
  write(tmp_path, "dtd", "heat", 1, 0.72)
  write(tmp_path, "svhn", "heat", 0, 0.90)
  write(tmp_path, "svhn", "heat", 1, 0.92)
  write(tmp_path, "eurosat", "heat", 0, 0.95)
  write(tmp_path, "eurosat", "heat", 1, 0.97)
  write(tmp_path, "clevr_count", "heat", 0, 0.60)
  write(tmp_path, "clevr_count", "heat", 1, 0.64)
  write(tmp_path, "dtd", "lora", 0, 0.50, params=3000, no_head=2000)
  summary = sweep_table.collect(tmp_path)

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
  assert set(summary["heat"]["metrics"]) == {"test_top1"}     # no val, no best epoch

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
  summary = sweep_table.collect(tmp_path)
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
  summary = sweep_table.collect(tmp_path)
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
    sweep_table.collect(tmp_path)


def test_collect_without_results(tmp_path):
  with pytest.raises(DataError, match="no results.json"):
    sweep_table.collect(tmp_path)


def test_run_sweep_layout_skip_and_failures(tmp_path, capsys):
  calls = []

  def runner(config, workdir):
    calls.append((config.data.task, config.method.name, config.seed, config.lora.rank, workdir))
    if config.data.task == "svhn" and config.method.name == "lora":
      raise RuntimeError("boom\nsecond line")
    write(tmp_path, config.data.task, config.method.name, config.seed, 0.5)

  failed = sweep.run_sweep(["dtd", "svhn"], ["heat", "lora"], [0, 1], tmp_path,
                           config_args="rank=4", runner=runner)
  assert failed == ["svhn/lora/seed0", "svhn/lora/seed1"]
  assert len(calls) == 8 and all(c[3] == 4 for c in calls)
  assert [c[2] for c in calls[:2]] == [0, 1]
  assert calls[0][4] == str(tmp_path / "dtd" / "heat" / "seed0")
  marker = json.loads((tmp_path / "svhn" / "lora" / "seed1" / "failed.json").read_text())
  assert marker["error"] == "RuntimeError: boom second line" and marker["seed"] == 1
  sweep_table.collect(tmp_path)
  md = (tmp_path / "results.md").read_text()
  assert "## Failed runs" in md
  assert "| svhn | lora | 1 | RuntimeError: boom second line | svhn/lora/seed1/log.txt |" in md
  assert "FAILED" in capsys.readouterr().err

  calls.clear()
  sweep.run_sweep(["dtd", "svhn"], ["heat", "lora"], [0, 1], tmp_path,
                  runner=lambda c, w: (calls.append(c.data.task), write(
                      tmp_path, c.data.task, c.method.name, c.seed, 0.6)))
  assert calls == ["svhn", "svhn"]                  # the finished runs were skipped
  assert not list(tmp_path.rglob("failed.json"))    # cleared when the retry succeeded
  sweep_table.collect(tmp_path)
  assert "Failed runs" not in (tmp_path / "results.md").read_text()
  with pytest.raises(ConfigError, match="must not set method"):
    sweep.run_sweep(["dtd"], ["heat"], [0], tmp_path, config_args="method=lora", runner=runner)
  with pytest.raises(ConfigError, match="unknown config argument"):
    sweep.run_sweep(["dtd"], ["heat"], [0], tmp_path, config_args="rnk=4", runner=runner)


def test_failures_alone_still_make_a_table(tmp_path):
  d = tmp_path / "dtd" / "lora" / "seed0"
  d.mkdir(parents=True)
  (d / "failed.json").write_text(json.dumps(
      {"task": "dtd", "method": "lora", "seed": 0, "error": "a|b", "log": "log.txt"}))
  sweep_table.collect(tmp_path)
  assert "| dtd | lora | 0 | a\\|b | dtd/lora/seed0/log.txt |" in (
      tmp_path / "results.md").read_text()
  write(tmp_path, "dtd", "lora", 0, 0.5)            # finished since: the marker is stale
  sweep_table.collect(tmp_path)
  assert "Failed runs" not in (tmp_path / "results.md").read_text()


def test_device_slots():
  gpus = [str(i) for i in range(8)]
  assert [s.env for s in sweep.device_slots(8, gpus)] == [
      {"CUDA_VISIBLE_DEVICES": str(i)} for i in range(8)]
  assert [s.env["CUDA_VISIBLE_DEVICES"] for s in sweep.device_slots(3, gpus)] == [
      "0,1", "2,3", "4,5"]
  assert sweep.device_slots(1, gpus)[0].env == {}          # one job: the mesh spans all
  assert sweep.device_slots(1, tpu=True)[0].env == {}
  assert [s.env for s in sweep.device_slots(3)] == [{}, {}, {}]
  with pytest.raises(ConfigError, match="2 GPU"):
    sweep.device_slots(3, ["4", "5"])
  with pytest.raises(ConfigError, match="TPU"):
    sweep.device_slots(2, tpu=True)


def test_visible_gpus_and_tpu_detection():
  assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
  assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
  assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
  assert sweep.visible_gpus({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0"}) == []
  assert not sweep.is_tpu_host({"JAX_PLATFORMS": "cpu"})


def test_error_line():
  log = "=== header\n[heat_jax] x\nerror: config.train.batch_size=9 is larger\n"
  assert sweep.error_line(log, 2) == "config.train.batch_size=9 is larger"
  trace = "Traceback (most recent call last):\n  File x\nValueError: bad shape\n"
  assert sweep.error_line(trace, 1) == "ValueError: bad shape"
  assert sweep.error_line("step 10\n", -signal.SIGKILL) == (
      "killed by SIGKILL (out of memory?); last output: step 10")
  assert sweep.error_line("", 3) == "exited with code 3 without output"


def test_job_command_is_a_run_py_command(tmp_path):
  [job] = sweep.plan(["dtd"], ["lora"], [3], tmp_path, config_args="rank=4")
  cmd = sweep.job_command(job, "configs/vtab.py")
  root = Path(sweep.__file__).resolve().parents[1]
  assert cmd[1:] == [str(root / "run.py"),
                     f"--config={root / 'configs' / 'vtab.py'}:task=dtd,method=lora,rank=4",
                     "--config.seed=3", f"--workdir={tmp_path.resolve() / 'dtd/lora/seed3'}",
                     "--config.train.progress=False"]
  assert job.config.seed == 3 and job.config.lora.rank == 4


def test_cli_parsing():
  assert sweep.parse_tasks("all") == NATURAL + SPECIALIZED + STRUCTURED
  assert sweep.parse_tasks("specialized,dtd") == SPECIALIZED + ["dtd"]
  assert sweep.parse_tasks("texture,count", vtab=False) == ["texture", "count"]
  assert sweep.parse_seeds("0, 1,2") == [0, 1, 2]
  assert sweep.parse_methods("heat, lora,heat") == ["heat", "lora"]
  with pytest.raises(ConfigError, match="unknown task 'dtdd'"):
    sweep.parse_tasks("dtdd")
  with pytest.raises(ConfigError):
    sweep.parse_seeds("a")
  with pytest.raises(ConfigError, match="no such file"):
    sweep.resolve_config("configs/nope.py")
  with pytest.raises(ConfigError, match="only the config"):
    sweep.resolve_config("configs/vtab.py:dtd")


def test_packaged_config_names_work_as_for_heat_jax(tmp_path, monkeypatch):
  """--config=smoke / vtab (the default) name the packaged files; outside a checkout (no
  run.py beside the package) a job runs as `python -m heat_jax.cli`."""
  from heat_jax import config_names
  packaged = config_names.config_dir().resolve()
  assert sweep.resolve_config("smoke") == packaged / "smoke.py"
  assert sweep.resolve_config(sweep.DEFAULT_CONFIG) == packaged / "vtab.py"
  assert sweep.is_vtab_config("vtab") and sweep.is_vtab_config("configs/vtab.py")
  assert not sweep.is_vtab_config("smoke")
  with pytest.raises(ConfigError, match="neither a packaged config"):
    sweep.resolve_config("smok")
  job = sweep.plan(["texture"], ["lora"], [0], tmp_path, config="smoke")[0]
  assert sweep.job_command(job, "smoke")[1:3] == [str(sweep.repo_root() / "run.py"),
                                                  f"--config={packaged / 'smoke.py'}:{job.arg}"]
  monkeypatch.setattr(sweep, "repo_root", lambda: tmp_path)   # an installed package
  assert sweep.job_command(job, "smoke")[1:4] == ["-m", "heat_jax.cli",
                                                  f"--config={packaged / 'smoke.py'}:{job.arg}"]


def test_cli_collect_only_and_bad_flags(tmp_path, capsys):
  write(tmp_path, "dtd", "heat", 0, 0.5)
  assert sweep.run_cli(["sweep", f"--workdir={tmp_path}", "--collect_only"]) == 0
  assert (tmp_path / "results.csv").exists()
  assert sweep.run_cli(["sweep", f"--workdir={tmp_path / 'empty'}", "--collect_only"]) == 2
  assert "no results.json" in capsys.readouterr().err
  for argv, needle in ((["--paralel=2"], "paralel"), (["--parallel=0"], "parallel"),
                       (["--tasks=dtd"], "--workdir is required"), (["dtd"], "unexpected"),
                       ([f"--workdir={tmp_path}", "--tasks=dtdd"], "dtdd")):
    assert sweep.run_cli(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
  assert sweep.run_cli(["sweep", "--help"]) == 0
  out = capsys.readouterr().out
  for name in ("tasks", "methods", "seeds", "workdir", "config", "config_args",
               "collect_only", "fail_fast", "parallel"):
    assert f"--{name}" in out or f"--[no]{name}" in out, name


def test_module_entry_point_bad_flag(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "heat_jax.sweep", "--seeds=0", "--paralel=2"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: Unknown command line flag 'paralel'. Did you mean: parallel ? (see --help)"]


# A config whose `broken=<task>` argument makes that task's run fail at start (a batch
# larger than the 128 smoke examples); without the argument every run succeeds.
FLAKY_CONFIG = '''
from configs import smoke

def get_config(arg):
  args = dict(a.split("=", 1) for a in arg.split(",") if a)
  broken = args.pop("broken", "")
  c = smoke.get_config(",".join(f"{k}={v}" for k, v in args.items()))
  c.train.epochs = 1
  if c.data.task == broken:
    c.train.batch_size = 4096
  return c
'''


def test_parallel_subprocess_sweep_reports_failures_and_resumes(tmp_path, capsys, monkeypatch):
  config = tmp_path / "flaky.py"
  config.write_text(FLAKY_CONFIG)
  work = tmp_path / "sweep"
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_NO_TENSORBOARD", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  argv = ["sweep", f"--config={config}", "--tasks=texture,count", "--methods=linear",
          "--seeds=0", f"--workdir={work}", "--parallel=2"]
  assert sweep.run_cli(argv + ["--config_args=broken=count"]) == 1
  err = capsys.readouterr().err.splitlines()
  progress = [l for l in err if " sweep [" in l]
  assert len(progress) == 4, err                     # one start and one end line per job
  assert all(" start " in l for l in progress[:2])   # both jobs ran at once
  assert any("texture/linear/seed0 done" in l for l in progress)
  assert any("count/linear/seed0 FAILED" in l and "batch_size=4096" in l for l in progress)
  assert err[-1].startswith("error: 1 job(s) did not finish: count/linear/seed0")
  done = work / "texture" / "linear" / "seed0"
  broken = work / "count" / "linear" / "seed0"
  assert json.loads((done / "results.json").read_text())["seed"] == 0
  assert "test top-1" in (done / "log.txt").read_text()
  marker = json.loads((broken / "failed.json").read_text())
  assert marker["exit_code"] == 2 and "batch_size=4096" in marker["error"]
  md = (work / "results.md").read_text()
  assert "synthetic/texture" in md and "synthetic/count" not in md
  failed_rows = [l for l in md.splitlines() if l.startswith("| count | linear | 0 |")]
  assert len(failed_rows) == 1 and "batch_size=4096" in failed_rows[0]

  done_log = (done / "log.txt").read_text()
  assert sweep.run_cli(argv) == 0                    # the problem fixed: rerun the sweep
  err = capsys.readouterr().err
  assert "1 of 2 jobs already finished, skipped" in err
  assert "count/linear/seed0 done" in err and "start texture" not in err
  assert (done / "log.txt").read_text() == done_log
  attempts = [l for l in (broken / "log.txt").read_text().splitlines() if l.startswith("=== ")]
  assert len(attempts) == 2
  assert not (broken / "failed.json").exists()
  md = (work / "results.md").read_text()
  assert "synthetic/count" in md and "Failed runs" not in md


# ----------------------------------------------------------------------------- tuned protocol


def test_parse_grid():
  from configs.smoke import get_config
  c = get_config("")
  pts = sweep.parse_grid(["optim.lr=1e-3,1e-2", "optim.weight_decay=0,1e-4"], c)
  assert pts == [{"optim.lr": 1e-3, "optim.weight_decay": 0.0},
                 {"optim.lr": 1e-3, "optim.weight_decay": 1e-4},
                 {"optim.lr": 1e-2, "optim.weight_decay": 0.0},
                 {"optim.lr": 1e-2, "optim.weight_decay": 1e-4}]
  assert sweep.parse_grid(["train.epochs=1,2"], c) == [{"train.epochs": 1}, {"train.epochs": 2}]
  for bad, match in (("optim.lrr=1", "no field"), ("optim.lr", "field=v1,v2"),
                     ("optim.lr=a", "not a float"), ("data.train_split=x", "protocol"),
                     ("optim.lr=1,1.0", "repeats")):
    with pytest.raises(ConfigError, match=match):
      sweep.parse_grid([bad], c)


def test_tuned_protocol_on_the_smoke_config(tmp_path):
  """2 tasks, heat + lora, 2 seeds, a 2-point lr grid: tune on train800 -> val200, pick by
  val top-1, write recipes.json, run every seed with the choice, mean ± std table."""
  workdir = tmp_path / "sweep"
  seen = []

  def runner(config, out):
    seen.append((out, config.data.train_split, config.data.val_split, config.optim.lr))
    config.train.epochs = 1                         # seconds per run: 2 steps
    config.data.num_train, config.data.num_val, config.data.num_test = 96, 32, 32
    return experiment.run(config, out, quiet=True)

  from heat_jax import experiment
  failed = sweep.run_sweep(["texture", "count"], ["heat", "lora"], [0, 1], workdir,
                           config=str(ROOT / "configs" / "smoke.py"),
                           grid=["optim.lr=1e-3,1e-2"], runner=runner)
  assert failed == []
  tune = [s for s in seen if "/tune/" in s[0]]
  final = [s for s in seen if "/tune/" not in s[0]]
  assert len(tune) == 2 * 2 * 2 and len(final) == 2 * 2 * 2
  assert all(s[1:3] == ("train800", "val200") for s in tune)     # the tuning splits
  assert all(s[1] in ("", "train800val200") and s[2] == "" for s in final)   # smoke's default
  assert all("seed0" in s[0] for s in tune)                        # tuned with the first seed
  recipes = json.loads((workdir / "recipes.json").read_text())
  assert set(recipes) == {"texture", "count"}
  for task, per in recipes.items():
    assert set(per) == {"heat", "lora"}
    for method, chosen in per.items():
      vals = [json.loads((workdir / "tune" / task / method / f"point{i}" / "seed0" /
                          "results.json").read_text()) for i in range(2)]
      assert all(v["val_held_out"] for v in vals)
      scores = [v["val_top1"] for v in vals]
      want = [1e-3, 1e-2][0 if scores[0] >= scores[1] else 1]     # ties: the earlier point
      assert chosen == {"optim.lr": want}
      for seed in (0, 1):
        r = json.loads((workdir / task / method / f"seed{seed}" / "results.json").read_text())
        assert r["config"]["optim"]["lr"] == want and r["val_top1"] is None
  summary = sweep_table.collect(workdir)
  assert set(summary) == {"heat", "lora"}                          # tuning runs left out
  md = (workdir / "results.md").read_text()
  assert "mean-19" not in md and "group mean" not in md and "cifar100" not in md
  row = next(l for l in md.splitlines() if l.startswith("| heat |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert len(cells) == 3 + 2 and all(" ± " in c for c in cells[3:])    # count, texture
  stat = summary["heat"]["metrics"]["test_top1"]["per_task"]["synthetic/texture"]
  vals = [json.loads((workdir / "texture" / "heat" / f"seed{s}" / "results.json")
                     .read_text())["test_top1"] * 100 for s in (0, 1)]
  assert stat.mean == pytest.approx(np.mean(vals)) and stat.std == pytest.approx(
      np.std(vals, ddof=1))
  assert "## Chosen hyper-parameters" in md and "optim.lr=" in md


def test_select_ties_go_to_the_earlier_point_and_missing_runs_are_reported(tmp_path):
  points = [{"optim.lr": 1e-3}, {"optim.lr": 1e-2}, {"optim.lr": 1e-1}]
  for i, val in enumerate((0.5, 0.7, 0.7)):
    d = sweep.tune_dir(tmp_path, "dtd", "heat", i, 0)
    d.mkdir(parents=True)
    # test_top1 would pick point 0: it is never read
    (d / "results.json").write_text(json.dumps({"val_top1": val, "val_held_out": True,
                                                "test_top1": 1.0 - i / 10}))
  recipes, missing = sweep.select(["dtd", "svhn"], ["heat"], 0, tmp_path, points)
  assert recipes == {"dtd": {"heat": {"optim.lr": 1e-2}}} and missing == ["svhn/heat"]
  d = sweep.tune_dir(tmp_path, "dtd", "heat", 1, 0)
  (d / "results.json").write_text(json.dumps({"val_top1": 0.9, "val_held_out": False}))
  assert sweep.select(["dtd"], ["heat"], 0, tmp_path, points)[1] == ["dtd/heat"]


def test_vtab_tuning_overrides_are_run_py_flags(tmp_path):
  jobs = sweep.plan_tuning(["dtd"], ["lora"], 0, tmp_path, [{"optim.lr": 0.01}])
  cmd = sweep.job_command(jobs[0], sweep.DEFAULT_CONFIG)
  assert "--config.optim.lr=0.01" in cmd
  assert "--config.data.train_split=train[:800]" in cmd
  assert "--config.data.val_split=validation[:200]" in cmd
  assert jobs[0].out == tmp_path / "tune" / "dtd" / "lora" / "point0" / "seed0"
