"""The command line: exit code 2 and one line for bad input; a smoke run succeeds."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, env=None, timeout=300):
  full_env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"),
              "HEAT_JAX_NO_TENSORBOARD": "1", **(env or {})}
  start = time.time()
  proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  return proc, time.time() - start


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("args,needle", [
    (["--config=configs/does_not_exist.py"], "does_not_exist"),
    (["--config=configs/vtab.py:not_a_task"], "not_a_task"),
    (["--config=configs/vtab.py:dtd", "--config.no_such_field=1"], "no_such_field"),
    (["--config=configs/vtab.py:dtd,method=nope", "--workdir=WORK"], "nope"),
    (["--config=configs/smoke.py", "--config.train.batch_size=0", "--workdir=WORK"],
     "batch_size"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, args, needle):
  args = [a.replace("WORK", str(tmp_path / "w")) for a in args]
  proc, _ = _run(args, tmp_path)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_tfds_data_fails_fast(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  proc, seconds = _run(["--config=configs/vtab.py:dtd", f"--config.data.data_dir={empty}",
                        f"--workdir={tmp_path / 'w'}"], tmp_path)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error:") and "dtd" in line and "prepare" in line
  assert seconds < 60
  assert "Traceback" not in proc.stderr


def test_missing_checkpoint_offline_fails_fast(tmp_path):
  port = _closed_port()
  proc, seconds = _run(["--config=configs/smoke.py", "--config.model.name=ViT-B_16",
                        "--config.model.pretrained=ViT-B_16", f"--workdir={tmp_path / 'w'}"],
                       tmp_path, env={"HEAT_JAX_VIT_MODELS_URL": f"http://127.0.0.1:{port}"})
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert "could not download" in line and "ViT-B_16.npz" in line and "put" in line
  assert seconds < 60
  assert not (tmp_path / "w" / "results.json").exists()


def test_smoke_run_writes_results(tmp_path):
  work = tmp_path / "w"
  proc, _ = _run(["--config=configs/smoke.py", f"--workdir={work}",
                  "--config.train.progress=False"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((work / "results.json").read_text())
  assert results["method"] == "heat" and results["num_test_examples"] == 64
  for name in ("importance.npy", "heads.npy", "importance.json", "importance.png",
               "adapter.npz", "adapter.json", "metrics.jsonl"):
    assert (work / name).exists(), name


@pytest.mark.parametrize("flag", ["--help", "--helpfull", "-?"])
def test_help_exits_0_with_usage_and_flags(tmp_path, flag):
  proc, _ = _run([flag], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Trains and evaluates one PETL run")
  for text in ("--config=configs/smoke.py", "Exit codes", "--config: Config file",
               "--workdir: Directory"):
    assert text in proc.stdout, text
  assert ("logtostderr:" in proc.stdout) == (flag == "--helpfull")   # absl's own flags
  assert not proc.stderr.strip()


def test_library_info_logs_hidden_unless_verbose(tmp_path):
  """absl.app.run sends INFO logs to stderr; orbax's per-checkpoint chatter stays hidden
  (--verbosity=1 shows it) while the run's own lines are printed."""
  args = ["--config=configs/smoke.py:method=linear", "--config.train.progress=False",
          "--config.train.max_steps=2"]
  quiet, _ = _run([*args, f"--workdir={tmp_path / 'q'}"], tmp_path)
  loud, _ = _run([*args, f"--workdir={tmp_path / 'v'}", "--verbosity=1"], tmp_path)
  assert quiet.returncode == loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
  assert "test top-1" in quiet.stdout + quiet.stderr
  assert "checkpoint" not in quiet.stderr.lower()
  assert "Saving checkpoint at step 2" in loud.stderr
