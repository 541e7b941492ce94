"""Full disks, a second run on one workdir, divergence and the sweep under SIGTERM.

Disk faults two ways: an injected ENOSPC (a file object that fails after some bytes,
always run) and a real size-limited tmpfs mounted by the test (root only; skipped with
the reason otherwise). Runs are real run.py / sweep processes; the slow-step script of
tests/test_preemption.py only slows steps down so that a signal or a second run lands
mid-training.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from heat_jax import io_utils, preemption
from heat_jax import workdir as workdir_lib
from heat_jax.errors import ConfigError, StorageError
from tests.test_preemption import ARGS, _env, _steps_done, start_slow
from tests.test_resume import checkpoint_steps

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- disk full


class _FullDisk(io.FileIO):
  """A file whose writes fail with ENOSPC once `limit` bytes are written."""

  limit = 1000

  def write(self, b):
    if self.tell() + len(b) > self.limit:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return super().write(b)


def _full_fdopen(fd, mode="r", *args, **kwargs):
  raw = _FullDisk(fd, mode.replace("b", "").replace("t", "") or "r", closefd=True)
  return raw if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw), write_through=True)


def test_injected_enospc_keeps_the_previous_file_and_names_the_space(tmp_path, monkeypatch):
  path = tmp_path / "adapter.npz"
  io_utils.write_npz(path, {"a": np.arange(3)})
  before = path.read_bytes()
  monkeypatch.setattr(io_utils.os, "fdopen", _full_fdopen)
  with pytest.raises(StorageError) as e:
    io_utils.write_npz(path, {"a": np.zeros(10_000, np.float32)})
  line = e.value.one_line()
  assert line.startswith(f"cannot write {path}: the disk is full; it needs about 42.0 KB")
  assert "are free there" in line and "\n" not in str(e.value)
  with pytest.raises(StorageError, match="results.json: the disk is full; it needs about 5.0 KB"):
    io_utils.write_json(tmp_path / "results.json", {"x": "y" * 5000})
  assert path.read_bytes() == before                 # the previous file is untouched
  assert sorted(os.listdir(tmp_path)) == ["adapter.npz"]   # no temporary file left


def test_other_errors_in_the_body_are_not_called_storage_errors(tmp_path):
  with pytest.raises(ConnectionResetError):
    with io_utils.atomic_open(tmp_path / "x.bin") as f:
      f.write(b"abc")
      raise ConnectionResetError(errno.ECONNRESET, "reset")
  assert os.listdir(tmp_path) == []


def test_vanished_folder_is_one_line(tmp_path):
  gone = tmp_path / "gone"
  gone.mkdir()
  target = gone / "results.json"
  real_replace = os.replace

  def vanish(src, dst):
    os.remove(src)
    os.rmdir(gone)
    return real_replace(src, dst)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(io_utils.os, "replace", vanish)
    with pytest.raises(StorageError, match="its folder does not exist"):
      io_utils.write_json(target, {})


# run.py whose write of adapter_model.safetensors fails with ENOSPC (the checkpoint at
# the last step is already committed by then).
FULL_AT_EXPORT = """
import contextlib, errno, os, sys
sys.path.insert(0, {root!r})
from heat_jax import artifacts
real = artifacts.atomic_open
@contextlib.contextmanager
def full_open(path, mode="wb", **kw):
  with real(path, mode, **kw) as f:
    if str(path).endswith(".safetensors"):   # as its first write would
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    yield f
artifacts.atomic_open = full_open
from heat_jax import cli
cli.run(["run.py", *sys.argv[1:]])
"""


def test_disk_full_during_an_export_then_rerun_finishes(tmp_path):
  work = tmp_path / "w"
  cache = tmp_path / "cache"
  proc = subprocess.run([sys.executable, "-c", FULL_AT_EXPORT.format(root=str(ROOT)), *ARGS,
                         f"--workdir={work}"], cwd=ROOT, env=_env(cache), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot write {work}/adapter_model.safetensors: the disk is "
                         "full"), last
  assert "Traceback" not in proc.stderr
  assert not (work / "results.json").exists()          # a rerun trusts nothing half-done
  assert not [n for n in os.listdir(work) if n.endswith(".tmp")]
  rerun = subprocess.run([sys.executable, "run.py", *ARGS, f"--workdir={work}"], cwd=ROOT,
                         env=_env(cache), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "checkpoint after last step" in rerun.stderr
  assert (work / "adapter_model.safetensors").exists()


@pytest.fixture
def small_fs(tmp_path):
  """A 3 MB tmpfs at tmp_path/fs (root in a container that allows mounts), else skip."""
  mount = tmp_path / "fs"
  mount.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a size-limited tmpfs needs root (the injected-ENOSPC tests run)")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-ENOSPC "
                "tests run")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> Path:
  """Writes a file that leaves about `leave` bytes free on folder's file system."""
  filler = folder / "filler"
  free = io_utils.free_bytes(folder)
  with open(filler, "wb") as f:
    try:
      f.write(b"\0" * max(free - leave, 0))
    except OSError:
      pass
  return filler


def test_real_full_disk_during_a_checkpoint_keeps_the_previous_one(small_fs, tmp_path):
  """On a 3 MB tmpfs: the disk fills up after the step-2 checkpoint, the step-4 save
  fails with one line, step 2 stays restorable, and once space is freed the rerun
  resumes from it and finishes."""
  work, step_file = small_fs / "w", tmp_path / "steps"
  args = [*ARGS, "--config.train.checkpoint_every_steps=2", f"--workdir={work}"]
  cache = tmp_path / "cache"
  proc = start_slow(args, _env(cache, STEP_FILE=str(step_file), STEP_SLEEP="0.6"),
                    tmp_path / "log")
  deadline = time.time() + 400
  while 2 not in checkpoint_steps(work):
    assert proc.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()[-3000:]
    time.sleep(0.02)
  filler = _fill(small_fs, leave=4096)
  rc = proc.wait(timeout=300)
  text = (tmp_path / "log").read_text()
  lines = [l for l in text.splitlines() if l.strip()]
  assert rc == 2, text[-3000:]
  # orbax's background writers may still report their own failures after the line
  errors = [l for l in lines if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {work}/"), lines[-5:]
  assert "the disk is full" in errors[0] and "free" in errors[0]
  assert checkpoint_steps(work) == [2]
  filler.unlink()
  rerun = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed from step 2" in rerun.stderr
  assert not [n for n in os.listdir(work / "checkpoints") if "tmp" in n]


# ----------------------------------------------------------------------------- one writer


def test_second_run_on_a_workdir_refuses_and_a_killed_run_frees_it(tmp_path):
  work, step_file = tmp_path / "w", tmp_path / "steps"
  cache = tmp_path / "cache"
  first = start_slow([*ARGS, f"--workdir={work}"],   # 8 steps of >= 6 s: busy for long
                     _env(cache, STEP_FILE=str(step_file), STEP_SLEEP="6"), tmp_path / "log")
  try:
    deadline = time.time() + 400
    while _steps_done(step_file) < 1:
      assert first.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()
      time.sleep(0.02)
    before = sorted(os.listdir(work))
    second = subprocess.run([sys.executable, "run.py", *ARGS, f"--workdir={work}"], cwd=ROOT,
                            env=_env(cache), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = [l for l in second.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith(f"error: workdir {work} is in use by another run (pid "
                                f"{first.pid} on host "), lines[-1]
    assert first.poll() is None                     # the first run goes on, untouched
    assert set(before) <= set(os.listdir(work))
  finally:
    first.send_signal(signal.SIGKILL)               # a crash: the kernel frees the lock
    first.wait()
  with workdir_lib.lock(str(work)):                 # not stuck
    pass
  third = subprocess.run([sys.executable, "run.py", *ARGS, "--config.train.max_steps=2",
                          f"--workdir={work}"], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=600)
  assert third.returncode == 0, third.stderr[-3000:]


def test_lock_in_process(tmp_path):
  with workdir_lib.lock(str(tmp_path / "w")):
    text = (tmp_path / "w" / workdir_lib.LOCK_FILE).read_text()
    assert text.startswith(f"pid {os.getpid()} on host ")
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from heat_jax import workdir\n"
              "try:\n  workdir.lock(%r).__enter__()\n"
              "except Exception as e:\n  print(type(e).__name__, e)\n") % (
                  str(ROOT), str(tmp_path / "w"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    assert out.startswith("ConfigError workdir ") and f"pid {os.getpid()}" in out, out


# ----------------------------------------------------------------------------- divergence


def test_divergence_never_saves_a_non_finite_checkpoint(tmp_path):
  """lr 1e38 with a checkpoint every step: the loss overflows at step 2; the run stops
  with one line naming step 2 and keeps the step-1 checkpoint, whose values are finite."""
  import orbax.checkpoint as ocp
  work = tmp_path / "w"
  proc = subprocess.run([sys.executable, "run.py", "--config=configs/smoke.py:method=linear",
                         "--config.train.progress=False", "--config.optim.lr=1e38",
                         "--config.optim.warmup_epochs=0",
                         "--config.train.checkpoint_every_steps=1", f"--workdir={work}"],
                        cwd=ROOT, env=_env(tmp_path / "cache"), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged:") and "at step 2;" in last, last
  assert checkpoint_steps(work) == [1]
  state = ocp.StandardCheckpointer().restore(work / "checkpoints" / "1" / "state")
  leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(state)]
  assert leaves and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")


def test_a_non_finite_state_is_never_saved(tmp_path):
  import jax.numpy as jnp
  from heat_jax.errors import TrainingError
  from heat_jax.training.checkpointing import TrainCheckpointer, all_finite
  assert all_finite({"a": jnp.ones(3), "s": jnp.int32(1)})
  assert not all_finite({"a": jnp.ones(2), "b": {"c": jnp.array([jnp.nan])}})
  ckpt = TrainCheckpointer(str(tmp_path / "c"))
  ckpt.save(1, {"params": {"w": jnp.ones(3)}, "step": jnp.int32(1)}, {})
  with pytest.raises(TrainingError, match="not finite at step 2; the last finite "
                     r"checkpoint \(step 1\) is kept"):
    ckpt.save(2, {"params": {"w": jnp.array([1.0, jnp.inf, 0.0])}, "step": jnp.int32(2)}, {})
  assert ckpt.latest_step() == 1
  ckpt.close()


# ----------------------------------------------------------------------------- the sweep

SWEEP_CONFIG = '''
from configs import smoke

def get_config(arg):
  c = smoke.get_config(arg)
  c.method.name = "linear"
  if c.data.task == "count":       # diverges at once
    c.optim.lr = 1e38
  else:                            # long enough to be terminated mid-training
    c.train.epochs = 400
  return c
'''


def test_sweep_forwards_sigterm_and_marks_divergence_failed(tmp_path):
  config = tmp_path / "cfg.py"
  config.write_text(SWEEP_CONFIG)
  work = tmp_path / "sweep"
  env = _env(tmp_path / "cache")
  proc = subprocess.Popen([sys.executable, "-m", "heat_jax.sweep", f"--config={config}",
                           "--tasks=count,texture", "--methods=linear", "--seeds=0",
                           f"--workdir={work}"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                          text=True)
  log = work / "texture" / "linear" / "seed0" / "log.txt"
  deadline = time.time() + 400
  while not (log.exists() and "trainable parameters" in log.read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == preemption.EXIT_CODE, err[-3000:]
  texture, count = (work / t / "linear" / "seed0" for t in ("texture", "count"))
  assert "texture/linear/seed0 interrupted" in err, err[-3000:]
  assert not (texture / "failed.json").exists()
  assert "preempted (SIGTERM): checkpoint saved at step" in log.read_text()
  assert checkpoint_steps(texture)
  failed = json.loads((count / "failed.json").read_text())
  assert failed["error"].startswith("training diverged:") and "step" in failed["error"]
  assert failed["exit_code"] == 2


def test_disk_full_during_a_checkpoint_download(tmp_path, monkeypatch):
  """A download from a local HTTP server into a disk that fills up after 1000 bytes."""
  import http.server
  import threading
  from heat_jax.checkpoints.download import download
  body = os.urandom(5000)

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass
  server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  dest = tmp_path / "ckpt" / "ViT.npz"
  try:
    monkeypatch.setattr(io_utils.os, "fdopen", _full_fdopen)
    with pytest.raises(StorageError, match=r"ViT.npz: the disk is full; it needs about "
                       r"5.0 KB"):
      download(f"http://127.0.0.1:{server.server_port}/ViT.npz", dest, progress=False)
    assert not dest.exists() and os.listdir(dest.parent) == []
    monkeypatch.undo()
    assert download(f"http://127.0.0.1:{server.server_port}/ViT.npz", dest,
                    progress=False).read_bytes() == body
  finally:
    server.shutdown()
