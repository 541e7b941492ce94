"""Logs on stderr through absl (--verbosity applies), results alone on stdout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSL_INFO = re.compile(r"^I\d{4} [\d:.]+ +\d+ (?:experiment|loop|finalize)\.py:\d+\] ", re.M)


def _run(args, tmp_path):
  env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
         "HEAT_JAX_NO_TENSORBOARD": "1"}
  return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_run_logs_to_stderr_and_prints_only_the_result(tmp_path):
  work = tmp_path / "w"
  proc = _run(["--config=configs/smoke.py:method=linear", f"--workdir={work}",
               "--config.train.epochs=1"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.splitlines()
  assert len(out) == 1 and re.fullmatch(
      r"synthetic/texture / linear: test top-1 [\d.]+ \(final epoch\), trainable "
      r"parameters [\d,]+", out[0]), proc.stdout
  # The engine's lines, in absl's format, and the progress bar, all on stderr.
  assert re.search(ABSL_INFO.pattern + r"linear on synthetic/texture: trainable parameters",
                   proc.stderr, re.M), proc.stderr[-3000:]
  assert re.search(ABSL_INFO.pattern + r"step 4 \(epoch 1\): test_top1", proc.stderr, re.M)
  assert "train: 100%" in proc.stderr
  # orbax's INFO lines (dozens per save) are hidden at the default verbosity.
  assert "orbax" not in proc.stderr and "checkpoint_manager.py" not in proc.stderr

  # The same command again: the finished run is reported, not redone; --verbosity=-1
  # keeps warnings only, and stdout still has the result line.
  quiet = _run(["--config=configs/smoke.py:method=linear", f"--workdir={work}",
                "--config.train.epochs=1", "--verbosity=-1"], tmp_path)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert quiet.stdout == proc.stdout
  assert not ABSL_INFO.search(quiet.stderr), quiet.stderr


def test_library_use_shows_info_unless_a_level_was_chosen():
  code = ("import sys\nfrom absl import logging\nfrom heat_jax import logs\n"
          "{before}\nlogs.setup()\nlogging.info('heat_jax-info-line')\n"
          "logging.debug('heat_jax-debug-line')\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}

  def stderr(before: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code.format(before=before)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return proc.stderr

  shown = stderr("")
  assert "heat_jax-info-line" in shown and "heat_jax-debug-line" not in shown
  assert "heat_jax-info-line" not in stderr("logging.set_verbosity(logging.WARNING)")
  assert "heat_jax-debug-line" in stderr("logging.set_verbosity(logging.DEBUG)")
