"""One run over 2 real processes (jax.distributed on CPU, gloo) = the same run in one process.

The reference is ONE process with 2 CPU devices (`--xla_force_host_platform_device_count=2`):
the same global batch split over the same 2-device 'data' mesh, so it isolates what
multi-process adds (each process loading its rows, global arrays built from the shares,
checkpoints saved and restored by every process, process 0 writing). A 1-device
reference would also differ by the order of the cross-device sums (~1e-7 here), which
says nothing about the multi-process machinery. Tolerance: accuracies (exact counts),
head selections and the checkpoint's step equal; losses and trained values
allclose(rtol=1e-5, atol=1e-6) because the summation order of the all-reduce may
differ between runtimes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from heat_jax.data.base import ArraySplit
from heat_jax.data.stream import StreamSplit

ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 8          # configs/smoke.py: 128 examples / batch 32 x 2 epochs
TIMEOUT = 400


# ----------------------------------------------------------------------------- shares


def _images(n):
  return np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3)


@pytest.mark.parametrize("pad", [True, False])
def test_process_shares_make_up_the_global_batches(pad):
  split = ArraySplit("s", _images(11), np.arange(11) % 3, lambda x: x.astype(np.float32))
  kw = dict(shuffle=True, seed=3, epoch=1, pad=pad, drop_remainder=not pad)
  whole = list(split.batches(4, **kw))
  shares = [list(split.batches(4, rows=np.arange(p * 2, p * 2 + 2), **kw)) for p in (0, 1)]
  assert len(whole) == len(shares[0]) == len(shares[1]) == (3 if pad else 2)
  for b, s0, s1 in zip(whole, *shares):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([s0[k], s1[k]]), b[k])
  if pad:  # 11 = 4 + 4 + 3: the last share of process 1 has one real row and one pad
    assert shares[1][-1]["mask"].tolist() == [1.0, 0.0]


def test_streamed_share_decodes_only_its_rows():
  loaded = []

  def load(i):
    loaded.append(i)
    return np.full((2, 2, 3), i, np.uint8), i % 2

  split = StreamSplit("t", 5, load, lambda x: x.astype(np.float32), num_classes=2,
                      workers=0)
  second = list(split.batches(4, pad=True, rows=np.array([2, 3])))
  # batches [0 1 2 3] and [4 pad pad pad]: rows 2, 3 are examples 2, 3, then two pads
  # (for an all-padding share example 0 is read once, for the image shape)
  assert set(loaded) - {0} == {2, 3}
  assert [b["label"].tolist() for b in second] == [[0, 1], [0, 0]]
  assert [b["mask"].tolist() for b in second] == [[1.0, 1.0], [0.0, 0.0]]
  assert second[1]["image"].shape == (2, 2, 2, 3)


# ----------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  # Runs of one test compile the same programs; JAX's persistent cache shares them.
  return tmp_path_factory.mktemp("xla_cache")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(tmp_path, xla_cache, devices=1):
  env = dict(os.environ)  # keeps the session's XLA_FLAGS (conftest: fast test compiles)
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             HEAT_JAX_NO_TENSORBOARD="1", HEAT_JAX_CACHE=str(tmp_path / "cache"),
             JAX_COMPILATION_CACHE_DIR=str(xla_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             # a size limit makes jax lock the cache around each read and write: the
             # processes never read an entry another one is still writing
             JAX_COMPILATION_CACHE_MAX_SIZE=str(1 << 30))
  if devices > 1:
    from tests.conftest import subprocess_xla_flags
    env["XLA_FLAGS"] = subprocess_xla_flags(
        f"--xla_force_host_platform_device_count={devices}")
  return env


def _start(args, env, log: Path) -> subprocess.Popen:
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _config(method, *overrides):
  return [f"--config=configs/smoke.py:method={method}", "--config.train.progress=False",
          *overrides]


def _reference(config, workdir, tmp_path, xla_cache):
  return _start([*config, f"--workdir={workdir}"], _env(tmp_path, xla_cache, devices=2),
                Path(f"{workdir}.log"))


def _pair(config, workdir, tmp_path, xla_cache, tag=""):
  port = _free_port()
  return [_start([*config, f"--workdir={workdir}",
                  f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}"], _env(tmp_path, xla_cache),
                 Path(f"{workdir}{tag}.p{i}.log"))
          for i in range(2)]


def _kill(proc):
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()


def _wait(procs, logs):
  deadline = time.time() + TIMEOUT
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    for p in procs:
      _kill(p)
    pytest.fail("timed out:\n" + "\n".join(Path(l).read_text()[-3000:] for l in logs))
  bad = [(p.returncode, l) for p, l in zip(procs, logs) if p.returncode]
  assert not bad, "\n".join(f"rc {rc}:\n{Path(l).read_text()[-3000:]}" for rc, l in bad)


def _steps(workdir):
  ckpt = Path(workdir, "checkpoints")
  return sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit()) if ckpt.is_dir() else []


def _assert_same_run(workdir, ref):
  got, want = (json.loads(Path(d, "results.json").read_text()) for d in (workdir, ref))
  for key in ("test_top1", "val_top1", "steps", "num_test_examples", "trainable_params"):
    assert got[key] == want[key], key
  assert [(h["step"], h["test_top1"], h.get("val_top1")) for h in got["history"]] == \
      [(h["step"], h["test_top1"], h.get("val_top1")) for h in want["history"]]

  def train_lines(d):
    lines = [json.loads(l) for l in Path(d, "metrics.jsonl").read_text().splitlines()]
    return {l["step"]: (l["train/loss"], l["train/grad_norm"]) for l in lines
            if "train/loss" in l}
  a, b = train_lines(workdir), train_lines(ref)
  assert sorted(a) == sorted(b) and len(a) == TOTAL_STEPS // 2
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)],
                             rtol=1e-5, atol=1e-6)
  with np.load(Path(workdir, "adapter.npz")) as x, np.load(Path(ref, "adapter.npz")) as y:
    assert sorted(x.files) == sorted(y.files)
    for k in x.files:
      np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _primary_only_prints(logs):
  p0, p1 = (Path(l).read_text() for l in logs)
  assert "test top-1" in p0
  assert "[heat_jax]" not in p1, p1[-2000:]


def test_lora_two_processes_match_one_process(tmp_path, xla_cache):
  work, ref = tmp_path / "mp", tmp_path / "ref"
  config = _config("lora")
  procs = [_reference(config, ref, tmp_path, xla_cache),
           *_pair(config, work, tmp_path, xla_cache)]
  logs = [f"{ref}.log", f"{work}.p0.log", f"{work}.p1.log"]
  _wait(procs, logs)
  _assert_same_run(work, ref)
  _primary_only_prints(logs[1:])
  assert _steps(work)[-1] == TOTAL_STEPS


def test_heat_two_processes_resume_after_one_is_killed(tmp_path, xla_cache):
  """SIGKILL process 1 after the first checkpoint, then its partner (which fails at its
  next collective but exits only after JAX's ~100 s heartbeat timeout); rerunning both
  finishes the run with the results of the one-process run, i.e. of an uninterrupted
  2-process run (the LoRA test)."""
  work, ref = tmp_path / "mp", tmp_path / "ref"
  config = _config("heat", "--config.train.checkpoint_every_steps=2")  # resumable early
  reference = _reference(config, ref, tmp_path, xla_cache)
  pair = _pair(config, work, tmp_path, xla_cache, tag=".killed")
  deadline = time.time() + TIMEOUT
  while not _steps(work) and all(p.poll() is None for p in pair) and time.time() < deadline:
    time.sleep(0.05)
  _kill(pair[1])
  try:
    pair[0].wait(timeout=3)   # the partner notices, or hangs in a collective: stop it
  except subprocess.TimeoutExpired:
    _kill(pair[0])
  killed_logs = [f"{work}.killed.p{i}.log" for i in range(2)]
  assert not (work / "results.json").exists(), "the run finished before it was killed"
  assert _steps(work) and _steps(work)[-1] < TOTAL_STEPS, "\n".join(
      Path(l).read_text()[-2000:] for l in killed_logs)
  selected = np.load(work / "heads.npy")

  pair = _pair(config, work, tmp_path, xla_cache)
  logs = [f"{ref}.log", f"{work}.p0.log", f"{work}.p1.log"]
  _wait([reference, *pair], logs)
  assert "resumed from step" in Path(logs[1]).read_text()
  _assert_same_run(work, ref)
  _primary_only_prints(logs[1:])
  np.testing.assert_array_equal(selected, np.load(ref / "heads.npy"))
  np.testing.assert_array_equal(np.load(work / "heads.npy"), np.load(ref / "heads.npy"))
  np.testing.assert_allclose(np.load(work / "importance.npy"),
                             np.load(ref / "importance.npy"), rtol=1e-5)
  assert json.loads((work / "results.json").read_text())["method_info"][
      "selection_restored"] is True


# ----------------------------------------------------------------------------- start-up

_LAUNCHER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                  "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                  "MEGASCALE_COORDINATOR_ADDRESS")


def test_launchers_are_detected_only_with_several_processes(monkeypatch):
  from heat_jax import distributed
  for k in _LAUNCHER_VARS:
    monkeypatch.delenv(k, raising=False)
  assert distributed.detected_cluster() is None
  assert distributed.initialize() is False   # a plain run: nothing to join
  slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_PROCID="0",
               SLURM_LOCALID="0")
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.detected_cluster() is None
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.detected_cluster() == "SLURM"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_processes=2), "--coordinator_address, --process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "[0, 2)"),
    (dict(coordinator_address="h", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), ">= 1"),
])
def test_bad_process_flags_are_config_errors(monkeypatch, kwargs, needle):
  from heat_jax import distributed
  from heat_jax.errors import ConfigError
  for k in _LAUNCHER_VARS:
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ConfigError) as e:
    distributed.initialize(**kwargs)
  assert needle in str(e.value)


def test_one_process_loads_every_row():
  from heat_jax import distributed
  mesh = distributed.make_mesh()
  rows = distributed.local_rows(distributed.batch_sharding(mesh), 4 * len(mesh.devices))
  np.testing.assert_array_equal(rows, np.arange(4 * len(mesh.devices)))


def test_cli_rejects_incomplete_process_flags(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
  proc = subprocess.run([sys.executable, "run.py", "--config=configs/smoke.py",
                         f"--workdir={tmp_path / 'w'}", "--num_processes=2"],
                        cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--coordinator_address" in lines[0], proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()
