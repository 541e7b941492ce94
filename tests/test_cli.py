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


def _run(args, tmp_path, env=None, timeout=300, cwd=ROOT):
  full_env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"),
              "HEAT_JAX_NO_TENSORBOARD": "1", **(env or {})}
  start = time.time()
  proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
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
    # a block set to a plain value: point at its field
    (["--config=smoke", "--config.method=lora", "--workdir=WORK"],
     "config.method is a block of fields, not a value (its fields: name); set one of "
     "them, e.g. --config.method.name=lora"),
    (["--config=smok:method=lora", "--workdir=WORK"],
     "'smok' is neither a packaged config (ade20k, demo, folder, real, smoke, smoke_seg, "
     "vtab)"),
    (["--config=vtab:not_a_task", "--workdir=WORK"], "not_a_task"),
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
  assert "dataset_info.json" not in proc.stderr   # TFDS's warning about a folder it guessed
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
  assert "transition_steps" not in proc.stderr   # optax's warning for warmup_epochs=0
  assert "WARNING" not in proc.stderr and not any(l.startswith("W") for l in
                                                  proc.stderr.splitlines()), proc.stderr


@pytest.mark.parametrize("flag", ["--help", "--helpfull", "-?"])
def test_help_exits_0_with_usage_and_flags(tmp_path, flag):
  proc, _ = _run([flag], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Trains and evaluates one PETL run")
  for text in ("--config=smoke:method=lora", "Exit codes", "--config: Packaged config name",
               "--workdir: Directory", "folder:root="):
    assert text in proc.stdout, text
  from heat_jax.methods import available_methods, method_class
  packaged = {m for m in available_methods()   # tests may register toy ones in this process
              if method_class(m).__module__.startswith("heat_jax.methods.")}
  line = next(l for l in proc.stdout.splitlines() if "--config.method.name=lora" in l)
  listed = set(line.split("lora", 1)[1].replace("|", " ").split())
  assert listed == packaged   # every registered method, not a kept list
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


def test_packaged_config_name_runs_from_any_directory(tmp_path):
  """`--config=smoke:method=lora` needs no configs/ folder in the current directory."""
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  proc, _ = _run(["--config=smoke:method=lora", "--config.train.max_steps=2",
                  "--config.train.progress=False", "--workdir=w"], tmp_path, cwd=elsewhere)
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((elsewhere / "w" / "results.json").read_text())
  assert results["method"] == "lora" and results["steps"] == 2


def test_refusal_names_the_changed_fields(tmp_path):
  """A finished run in the workdir, rerun with other epochs and lr: the one line names
  both fields with their values and the two ways on."""
  work = tmp_path / "w"
  args = ["--config=smoke:method=linear", "--config.train.progress=False",
          "--config.train.epochs=1", f"--workdir={work}"]
  first, _ = _run(args, tmp_path)
  assert first.returncode == 0, first.stderr[-2000:]
  proc, _ = _run([*args, "--config.train.epochs=2", "--config.optim.lr=0.01"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  assert "holds a finished run with a different config" in lines[0]
  assert "optim.lr: 0.001 -> 0.01" in lines[0] and "train.epochs: 1 -> 2" in lines[0]
  assert "new --workdir" in lines[0] and "--config.train.resume=False" in lines[0]
  assert "train.progress" not in lines[0]   # resume-neutral fields are not differences


def test_refusal_of_a_checkpoint_only_workdir_names_the_field(tiny_config, tmp_path,
                                                              interrupted_run):
  from heat_jax import experiment
  from heat_jax.errors import ConfigError
  c = tiny_config
  c.method.name = "linear"
  c.train.checkpoint_every_steps = 2
  interrupted_run(c, str(tmp_path / "w"), at_step=5)   # checkpoints at 2 and 4
  assert not (tmp_path / "w" / "results.json").exists()
  c.train.epochs = 3
  with pytest.raises(ConfigError, match=r"holds a run with a different config "
                     r"\(train.epochs: 2 -> 3\)"):
    experiment.run(c, str(tmp_path / "w"), quiet=True)


INTERRUPT = """
import sys
from heat_jax import cli
from heat_jax.training.trainer import Trainer
original, calls = Trainer.train_step, []
def step(self, state, batch):
  calls.append(1)
  if len(calls) == 3:
    raise KeyboardInterrupt
  return original(self, state, batch)
Trainer.train_step = step
cli.run(["run.py", *sys.argv[1:]])
"""


def test_interrupt_line_is_not_spliced_into_the_progress_bar(tmp_path):
  env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"),
         "HEAT_JAX_NO_TENSORBOARD": "1", "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-c", INTERRUPT, "--config=smoke:method=linear",
                         "--config.train.progress=True", f"--workdir={tmp_path / 'w'}"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 130, proc.stderr[-2000:]
  assert "train:" in proc.stderr   # the bar was drawn
  lines = proc.stderr.replace("\r", "\n").split("\n")
  assert "interrupted; rerun the same command to resume" in lines, proc.stderr[-2000:]
