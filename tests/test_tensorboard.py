"""TensorBoard event files hold the same scalars as metrics.jsonl (the [tb] extra).

Read back with TensorBoard's own EventAccumulator. tests/conftest.py turns TensorBoard
off for the suite (HEAT_JAX_NO_TENSORBOARD=1); these tests turn it back on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="TensorBoard logging needs the [tb] extra "
                    '(pip install -e ".[tb]")')
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="reading event files needs tensorboard (the [tb] extra)")

from heat_jax.training.metrics import MetricWriter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _from_jsonl(workdir: Path) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of the numeric entries of metrics.jsonl, in file order."""
  series: dict[str, list[tuple[int, float]]] = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    step = record.pop("step")
    for key, value in record.items():
      if isinstance(value, (int, float)):
        series.setdefault(key, []).append((step, value))
  return series


def _from_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every point
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def _assert_same_scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
  expected = _from_jsonl(workdir)
  got = _from_events(workdir / "tb")
  assert expected and set(got) == set(expected)
  for tag, points in expected.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    # Event files store float32.
    np.testing.assert_array_equal(np.float32([v for _, v in got[tag]]),
                                  np.float32([v for _, v in points]), err_msg=tag)
  return got


@pytest.fixture
def tb_on(monkeypatch):
  monkeypatch.delenv("HEAT_JAX_NO_TENSORBOARD", raising=False)


def test_writer_events_equal_jsonl(tmp_path, tb_on):
  writer = MetricWriter(str(tmp_path))
  assert writer.tensorboard
  for step in (2, 4, 6):
    writer.write(step, {"train/loss": 1.0 / step, "train/img_per_s": 100.0 + step})
  writer.write(6, {"eval/epoch": 1, "eval/test_top1": 0.3125, "eval/note": "text"})
  writer.close()
  got = _assert_same_scalars(tmp_path)
  assert set(got) == {"train/loss", "train/img_per_s", "eval/epoch", "eval/test_top1"}
  assert got["train/loss"][1] == (4, 0.25)


def test_resume_hides_the_events_past_the_resume_step(tmp_path, tb_on):
  first = MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    first.write(step, {"train/loss": float(step)})
  first.close()
  resumed = MetricWriter(str(tmp_path), resume_step=2)  # steps 3-4 are run again
  for step in (3, 4, 5):
    resumed.write(step, {"train/loss": 10.0 * step})
  resumed.close()
  got = _assert_same_scalars(tmp_path)
  assert got["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
  restarted = MetricWriter(str(tmp_path), resume_step=0)  # a fresh run in the same workdir
  restarted.write(1, {"train/loss": 7.0})
  restarted.close()
  assert _assert_same_scalars(tmp_path)["train/loss"] == [(1, 7.0)]


@pytest.mark.parametrize("value,written", [("1", False), ("yes", False), ("0", True),
                                           ("", True)])
def test_environment_variable_turns_it_off(tmp_path, monkeypatch, value, written):
  monkeypatch.setenv("HEAT_JAX_NO_TENSORBOARD", value)
  writer = MetricWriter(str(tmp_path))
  writer.write(1, {"train/loss": 0.5})
  writer.close()
  assert writer.tensorboard == written
  assert (tmp_path / "tb").is_dir() == written
  assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 1, "train/loss": 0.5}'


def test_cli_run_writes_events_equal_to_jsonl(tmp_path):
  workdir = tmp_path / "smoke"
  env = {k: v for k, v in os.environ.items() if k != "HEAT_JAX_NO_TENSORBOARD"}
  env.update(JAX_PLATFORMS="cpu", HEAT_JAX_CACHE=str(tmp_path / "cache"))
  out = subprocess.run([sys.executable, "run.py", "--config=configs/smoke.py",
                        f"--workdir={workdir}", "--config.train.progress=False"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = _assert_same_scalars(workdir)
  assert {"train/loss", "eval/test_top1"} <= set(got)
  assert "eval/val_top1" not in got     # smoke trains on train800val200: val is not held out
