"""Interrupted, repeated and changed runs through the real command line (run.py).

A reference smoke run (HEAT on ViT-micro, a checkpoint after every step) is compared
with: the same command in another fresh workdir (bit-identical), a run killed with
SIGKILL at a random step and rerun, a run killed between its final checkpoint and
results.json and rerun, and a repeat of the finished command. Kills are real SIGKILLs
of real run.py processes; the two that must land at an exact point are run.py processes
started by a small script that swaps one function for a self-kill (no test hook in
the library).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/smoke.py", "--config.train.progress=False",
        "--config.train.checkpoint_every_steps=1"]
TOTAL_STEPS = 8                                     # smoke: 128 / 32 x 2 epochs
TIMINGS = ("wall_time_s", "train_time_s", "images_per_s")
# Runs run.py in this process after replacing `target` (module:attribute) with a SIGKILL.
KILL_AT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import importlib
module, attr = {target!r}.split(":")
setattr(importlib.import_module(module), attr,
        lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
from heat_jax import cli
cli.run(["run.py", *sys.argv[1:]])
"""


def _env(cache: Path) -> dict:
  return {**os.environ, "HEAT_JAX_CACHE": str(cache), "HEAT_JAX_NO_TENSORBOARD": "1"}


def run_cli(workdir: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "run.py", *ARGS, *extra, f"--workdir={workdir}"],
                        cwd=ROOT, env=_env(cache), capture_output=True, text=True,
                        timeout=600)


def run_killed_at(target: str, workdir: Path, cache: Path, *extra: str) -> int:
  """run.py with `target` replaced by a SIGKILL of the process; returns the exit code."""
  script = KILL_AT.format(root=str(ROOT), target=target)
  proc = subprocess.run([sys.executable, "-c", script, *ARGS, *extra, f"--workdir={workdir}"],
                        cwd=ROOT, env=_env(cache), capture_output=True, text=True,
                        timeout=600)
  return proc.returncode


def comparable(results: dict) -> dict:
  """results.json without timings and the resume provenance flag."""
  out = {k: v for k, v in results.items() if k not in TIMINGS}
  out["method_info"] = {k: v for k, v in results["method_info"].items()
                        if not k.endswith("_seconds") and k != "selection_restored"}
  return out


def load_run(workdir: Path) -> tuple[dict, dict[str, np.ndarray]]:
  results = json.loads((workdir / "results.json").read_text())
  with np.load(workdir / "adapter.npz", allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  return results, arrays


def assert_same_run(a: Path, b: Path, *, config_changes: dict | None = None) -> None:
  """Same results (timings aside) and bit-identical adapters; `config_changes` are the
  train.* fields b was run with on top of a's config."""
  ra, xa = load_run(a)
  rb, xb = load_run(b)
  ra["config"]["train"].update(config_changes or {})
  assert comparable(ra) == comparable(rb)
  assert sorted(xa) == sorted(xb)
  for key in xa:   # bit for bit
    assert xa[key].dtype == xb[key].dtype and xa[key].shape == xb[key].shape, key
    assert xa[key].tobytes() == xb[key].tobytes(), key


def checkpoint_steps(workdir: Path) -> list[int]:
  d = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.is_dir() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Two uninterrupted runs of the same command in fresh workdirs (run in parallel)."""
  base = tmp_path_factory.mktemp("resume")
  cache = base / "cache"
  procs = [subprocess.Popen([sys.executable, "run.py", *ARGS, f"--workdir={base / name}"],
                            cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  return base, cache


def test_same_command_twice_is_bit_identical(reference):
  base, _ = reference
  results, _ = load_run(base / "a")
  assert results["steps"] == TOTAL_STEPS and len(results["history"]) == 2
  assert_same_run(base / "a", base / "b")


def test_finished_command_reports_its_results(reference):
  base, cache = reference
  path = base / "a" / "results.json"
  before, mtime = path.read_bytes(), path.stat().st_mtime_ns
  proc = run_cli(base / "a", cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  top1 = json.loads(before)["test_top1"]
  assert f"{top1:.4f}" in proc.stdout + proc.stderr
  assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
  assert checkpoint_steps(base / "a")[-1] == TOTAL_STEPS


def test_sigkill_at_a_random_step_then_rerun_gives_the_same_run(reference):
  base, cache = reference
  work = base / "killed"
  kill_after = random.randint(1, TOTAL_STEPS - 2)
  proc = subprocess.Popen([sys.executable, "run.py", *ARGS, f"--workdir={work}"], cwd=ROOT,
                          env=_env(cache), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not any(s >= kill_after for s in checkpoint_steps(work)):
    assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = checkpoint_steps(work)
  assert not (work / "results.json").exists() and steps[-1] < TOTAL_STEPS, (kill_after, steps)

  # The killed run's checkpoint is never taken for another config's.
  other = run_cli(work, cache, "--config.optim.lr=0.01")
  assert other.returncode == 2
  assert "holds a run with a different config" in other.stderr.strip().splitlines()[-1]
  assert checkpoint_steps(work) == steps

  proc = run_cli(work, cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results, _ = load_run(work)
  assert results["method_info"].get("selection_restored"), f"did not resume ({kill_after})"
  assert_same_run(base / "a", work)


def test_sigkill_after_the_last_checkpoint_then_rerun_finishes(reference):
  """Killed when the final checkpoint exists but results.json does not (AFTER_LAST_STEP)."""
  base, cache = reference
  work = base / "after_last"
  assert run_killed_at("heat_jax.artifacts:export_adapter", work, cache) == -signal.SIGKILL
  assert checkpoint_steps(work)[-1] == TOTAL_STEPS
  assert not (work / "results.json").exists() and not (work / "adapter.npz").exists()
  proc = run_cli(work, cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_run(base / "a", work)


def test_stale_head_selection_is_never_reused(reference):
  """A HEAT run killed after selecting 1 head leaves heads.npy; rerun with budget 3 in the
  same workdir selects and trains 3 heads."""
  base, cache = reference
  work = base / "stale"
  code = run_killed_at("heat_jax.experiment:Trainer", work, cache, "--config.heat.budget=1")
  assert code == -signal.SIGKILL
  assert np.load(work / "heads.npy").sum() == 1 and not checkpoint_steps(work)
  proc = run_cli(work, cache, "--config.heat.budget=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results, _ = load_run(work)
  assert results["method_info"]["heads_selected"] == 3
  assert np.load(work / "heads.npy").sum() == 3
  # ViT-micro (width 32, 2 heads of 16): per head q/k/v kernel slices and biases
  # 3 x (32 x 16 + 16), out kernel slice 16 x 32.
  assert results["trainable_params_no_head"] == 3 * (3 * (32 * 16 + 16) + 16 * 32)


def test_export_merged_asked_for_later_is_written_from_the_checkpoint(reference):
  base, cache = reference
  work = base / "merged_later"
  shutil.copytree(base / "a", work)
  proc = run_cli(work, cache, "--config.train.export_merged=True")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(work / "merged.npz", allow_pickle=False) as f:
    assert "head/kernel" in f.files
  assert_same_run(base / "a", work, config_changes={"export_merged": True})
