"""SIGTERM (preemption) through the real command line: save, exit 75, resume bit-equal.

Real SIGTERMs go to real run.py processes. The processes run run.py from a small
script that only slows each train step down (so the signal lands mid-training) and
counts the steps in a file the test watches; no hook in the library. A second SIGINT
and SIGTERM sent while the preemption checkpoint is being written are held until it is
committed. One 2-process test: SIGTERM to process 1 only stops both at one step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from heat_jax import preemption
from tests.test_resume import assert_same_run, checkpoint_steps

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/smoke.py", "--config.train.progress=False"]
TOTAL_STEPS = 8
# run.py with every train step slowed down and counted in $STEP_FILE; with
# $SIGNALS_IN_SAVE, the first checkpoint save first sends those signals to itself.
SLOW = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from heat_jax.training import checkpointing, trainer
step, save = trainer.Trainer.train_step, checkpointing.TrainCheckpointer.save
count = [0]
def slow_step(self, *a, **k):
  time.sleep(float(os.environ.get("STEP_SLEEP", "0.4")))
  out = step(self, *a, **k)
  count[0] += 1
  with open(os.environ["STEP_FILE"], "w") as f:
    f.write(str(count[0]))
  return out
def signalling_save(self, *a, **k):
  for name in os.environ.pop("SIGNALS_IN_SAVE", "").split(","):
    if name:
      os.kill(os.getpid(), getattr(signal, name))
  return save(self, *a, **k)
trainer.Trainer.train_step = slow_step
checkpointing.TrainCheckpointer.save = signalling_save
from heat_jax import cli
cli.run(["run.py", *sys.argv[1:]])
"""


def _env(cache: Path, **extra: str) -> dict:
  return {**os.environ, "HEAT_JAX_CACHE": str(cache), "HEAT_JAX_NO_TENSORBOARD": "1",
          "JAX_PLATFORMS": "cpu", **extra}


def _steps_done(path: Path) -> int:
  try:
    return int(path.read_text() or 0)
  except (OSError, ValueError):
    return 0


def start_slow(args: list[str], env: dict, log: Path) -> subprocess.Popen:
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, "-c", SLOW.format(root=str(ROOT)), *args],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def sigterm_after(procs: list[subprocess.Popen], target: subprocess.Popen, step_file: Path,
                  steps: int, timeout: float = 400) -> None:
  """Sends SIGTERM to `target` once `step_file` counts `steps` train steps."""
  deadline = time.time() + timeout
  while _steps_done(step_file) < steps:
    assert all(p.poll() is None for p in procs), "a run ended before the SIGTERM"
    assert time.time() < deadline, "no train steps"
    time.sleep(0.02)
  target.send_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  base = tmp_path_factory.mktemp("preempt")
  proc = subprocess.run([sys.executable, "run.py", *ARGS, f"--workdir={base / 'ref'}"],
                        cwd=ROOT, env=_env(base / "cache"), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return base


def test_exit_code_is_documented():
  assert preemption.EXIT_CODE == 75
  from heat_jax import cli
  assert "75 preempted" in cli.USAGE   # the --help text of run.py and heat-jax
  assert f"exit code {preemption.EXIT_CODE}" in (ROOT / "README.md").read_text()


def test_sigterm_saves_exits_75_and_the_rerun_is_bit_equal(reference, tmp_path):
  """SIGTERM at a random step: a checkpoint at a later step than any periodic one (the
  smoke config saves every 200 steps), exit 75; SIGINT + SIGTERM during that save do
  not break it; the rerun equals the uninterrupted run bit for bit."""
  work, step_file, log = tmp_path / "w", tmp_path / "steps", tmp_path / "log"
  at = random.randint(1, TOTAL_STEPS - 3)
  env = _env(reference / "cache", STEP_FILE=str(step_file), SIGNALS_IN_SAVE="SIGINT,SIGTERM")
  proc = start_slow([*ARGS, f"--workdir={work}"], env, log)
  sigterm_after([proc], proc, step_file, at)
  rc = proc.wait(timeout=300)
  text = log.read_text()
  assert rc == preemption.EXIT_CODE, text[-3000:]
  last = [l for l in text.splitlines() if l.strip()][-1]
  saved = checkpoint_steps(work)
  assert last.startswith("preempted (SIGTERM): checkpoint saved at step"), last
  assert len(saved) == 1 and at <= saved[0] < TOTAL_STEPS, (at, saved)
  assert f"step {saved[0]};" in last
  assert not (work / "results.json").exists() and "Traceback" not in text

  rerun = subprocess.run([sys.executable, "run.py", *ARGS, f"--workdir={work}"], cwd=ROOT,
                         env=_env(reference / "cache"), capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resumed from step {saved[0]}" in rerun.stderr
  assert_same_run(reference / "ref", work)


def test_sigterm_before_training_exits_75_and_leaves_nothing(reference, tmp_path):
  """SIGTERM while the run prepares (HEAT scores its heads): no step to save, exit 75,
  and the workdir the run created is gone (nothing to resume yet)."""
  work, log = tmp_path / "w", tmp_path / "log"
  proc = start_slow([*ARGS, f"--workdir={work}"], _env(reference / "cache",
                                                       STEP_FILE=str(tmp_path / "s")), log)
  deadline = time.time() + 300
  while not (work / "heads.npy").exists():   # written after scoring, before the first step
    assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=300)
  text = log.read_text()
  assert rc == preemption.EXIT_CODE, text[-3000:]
  steps = _steps_done(tmp_path / "s")
  if steps == 0:
    assert "stopped before training" in text.splitlines()[-1]
    assert not work.exists()
  else:   # the first step was already under way: then it was saved
    assert checkpoint_steps(work) == [steps], text[-3000:]


# ----------------------------------------------------------------------------- 2 processes


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """Process 1 alone gets SIGTERM: both save the same step and exit 75; rerunning both
  gives the run of one process over the same 2-device mesh (the tolerance of
  tests/test_multiprocess.py)."""
  from tests import test_multiprocess as mp
  xla_cache = tmp_path / "xla"
  work, ref = tmp_path / "mp", tmp_path / "ref"
  config = mp._config("lora")
  reference = mp._reference(config, ref, tmp_path, xla_cache)
  port = mp._free_port()
  step_file = tmp_path / "steps"
  procs = []
  for i in range(2):
    env = mp._env(tmp_path, xla_cache)
    if i == 1:
      env["STEP_FILE"] = str(step_file)
    else:
      env["STEP_FILE"] = str(tmp_path / "steps0")
    procs.append(start_slow([*config, f"--workdir={work}",
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                             f"--process_id={i}"], env, Path(f"{work}.killed.p{i}.log")))
  try:
    sigterm_after(procs, procs[1], step_file, 2)
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = [Path(f"{work}.killed.p{i}.log").read_text() for i in range(2)]
  assert codes == [preemption.EXIT_CODE] * 2, "\n".join(l[-2000:] for l in logs)
  saved = mp._steps(work)
  assert len(saved) == 1 and 2 <= saved[0] < mp.TOTAL_STEPS, saved
  assert f"checkpoint saved at step {saved[0]}" in logs[0].splitlines()[-1]
  assert f"checkpoint saved at step {saved[0]}" in logs[1].splitlines()[-1]
  assert not (work / "results.json").exists()

  pair = mp._pair(config, work, tmp_path, xla_cache)
  names = [f"{ref}.log", f"{work}.p0.log", f"{work}.p1.log"]
  mp._wait([reference, *pair], names)
  assert f"resumed from step {saved[0]}" in Path(names[1]).read_text()
  mp._assert_same_run(work, ref)
  assert json.loads((work / "results.json").read_text())["steps"] == mp.TOTAL_STEPS
  np.testing.assert_array_equal(mp._steps(work)[-1], mp.TOTAL_STEPS)


# ----------------------------------------------------------------------------- in process


def test_guard_turns_sigterm_into_a_request_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.Guard() as guard:
    with pytest.raises(preemption.Preempted, match="stopped before training"):
      os.kill(os.getpid(), signal.SIGTERM)          # not armed yet: stop at once
    should_stop = preemption.watch()
    assert should_stop(1) is True                    # the request stays
    guard.requested = False
    assert should_stop(2) is False
    os.kill(os.getpid(), signal.SIGTERM)             # armed: only a request
    assert should_stop(3) is True
  assert signal.getsignal(signal.SIGTERM) is before
  assert preemption.watch()(4) is False              # no guard: never stops


def test_signals_during_a_save_wait_until_it_is_done():
  events = []
  with preemption.Guard() as guard:
    preemption.watch()
    with pytest.raises(KeyboardInterrupt):
      with preemption.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        events.append("saved")                       # the save goes on to its end
    assert events == ["saved"] and not guard.requested
    with preemption.deferred():                      # SIGTERM + SIGINT in a save:
      os.kill(os.getpid(), signal.SIGINT)            # a stop request, no interrupt
      os.kill(os.getpid(), signal.SIGTERM)
      events.append("saved again")
    assert guard.requested and events[-1] == "saved again"
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
