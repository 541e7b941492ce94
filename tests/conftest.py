"""Shared test fixtures: a tiny config and the toy data source."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HEAT_JAX_NO_TENSORBOARD", "1")


def _session_compilation_cache() -> None:
  """One persistent XLA compilation cache for this test session and its subprocesses.

  Many tests build the same tiny model and step again (each run jits fresh closures), and
  subprocess tests start cold; with the cache the same HLO compiles once per session. A
  new temporary directory each session (removed at exit), so nothing stale carries over
  between CI runs; set JAX_COMPILATION_CACHE_DIR yourself to keep one across sessions.
  """
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  path = tempfile.mkdtemp(prefix="heat_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # No size limit: with one, jax's cache lists and reads every entry's access time on
  # each write (under a file lock), which grows with the session's thousands of entries
  # (a 14 s test took 76 s late in the suite). An entry read while the other worker
  # still writes it fails to decode; jax then warns and compiles.


def _fast_test_compiles() -> None:
  """Tests compile far more than they run (over 70% of a test file's time is XLA's
  backend compile), so the session compiles for speed of compiling:
    * `--xla_backend_optimization_level=0` skips LLVM's optimisation passes (about a
      fifth off a compile-bound test; matmuls and convolutions still run in Eigen /
      oneDNN);
    * `--xla_cpu_use_fusion_emitters=false` emits fusions with XLA's elemental IR
      emitters instead of the MLIR fusion emitters (about a third off again:
      test_heart_lora 23.8 s -> 17.0 s, measured back to back).
  XLA's HLO passes (fusion, layout) are unchanged, but the generated code rounds
  differently in the last bits, so results differ from a default build by rounding:
  every test compares against an independent reference within a tolerance (the demo
  asset's 50-step trace agrees to ~1e-7). Applies to the test session and its
  subprocesses; a flag already in XLA_FLAGS is left as it is.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"{name}={value}" for name, value in FAST_COMPILES if name not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


FAST_COMPILES = (("--xla_backend_optimization_level", "0"),
                 ("--xla_cpu_use_fusion_emitters", "false"))


def subprocess_xla_flags(*extra: str) -> str:
  """XLA_FLAGS for a test's subprocess: the session's flags plus `extra`, e.g. a host
  device count."""
  return " ".join([*os.environ.get("XLA_FLAGS", "").split(), *extra])


_session_compilation_cache()  # before anything imports jax (it reads these at import)
_fast_test_compiles()

import pytest  # noqa: E402

import heat_jax.testing.toy_task  # noqa: E402,F401  (registers source 'toy')


@pytest.fixture
def tiny_config():
  """A ViT-micro run on the toy task that takes seconds on a CPU."""
  from configs.common import base_config
  c = base_config()
  c.model.name = "ViT-micro"
  c.model.pretrained = ""
  c.model.image_size = 32
  c.model.drop_path_rate = 0.0
  c.data.source = "toy"
  c.data.task = "toy"
  c.data.num_train = 64
  c.data.num_val = 0
  c.data.num_test = 37
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.epochs = 2
  c.train.progress = False
  c.train.eval_every_epochs = 1
  c.train.log_every_steps = 2
  c.optim.warmup_epochs = 0
  c.importance.batch_size = 16
  c.importance.num_batches = 2
  c.heat.budget = 3
  return c


@pytest.fixture
def interrupted_run(monkeypatch):
  """`interrupted_run(config, workdir, at_step=n)`: runs `experiment.run` and stops it
  with a KeyboardInterrupt at its n-th train step (1-based), as Ctrl-C would."""
  from heat_jax import experiment
  from heat_jax.training.trainer import Trainer

  def run(config, workdir: str, *, at_step: int) -> None:
    calls = {"n": 0}
    original = Trainer.train_step

    def crashing(self, state, batch):
      calls["n"] += 1
      if calls["n"] == at_step:
        raise KeyboardInterrupt
      return original(self, state, batch)

    with monkeypatch.context() as m:
      m.setattr(Trainer, "train_step", crashing)
      with pytest.raises(KeyboardInterrupt):
        experiment.run(config, workdir, quiet=True)
  return run


@pytest.fixture
def torch_and_timm():
  """(torch, timm) for the optional cross-checks against timm; skipped without the
  [tools] extra. torchvision's compiled ops may not load next to a CPU torch wheel;
  timm's models never use them, but their meta registrations are imported eagerly."""
  import sys
  import types
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  torch = pytest.importorskip("torch", reason='needs torch (the [tools] extra: '
                              'pip install -e ".[tools]")')
  try:
    import timm
    import timm.models.vision_transformer  # noqa: F401
  except Exception as e:  # ImportError, or torchvision failing to load  # noqa: BLE001
    pytest.skip(f"timm is not importable ({type(e).__name__}: {e}); the [tools] extra")
  return torch, timm


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
  """`run(*args)`: `python run.py *args --workdir=W` once per distinct args in a session.

  Returns (W, CompletedProcess); asserts exit code 0 unless `check=False`. Tests that
  need the same finished run (e.g. the smoke LoRA run) share it.
  """
  import subprocess
  import sys
  from pathlib import Path
  root = Path(__file__).resolve().parents[1]
  cache = tmp_path_factory.mktemp("cli_cache")
  done = {}

  def run(*args: str, check: bool = True):
    if args not in done:
      work = tmp_path_factory.mktemp("cli_run") / "w"
      env = {**os.environ, "HEAT_JAX_CACHE": str(cache), "JAX_PLATFORMS": "cpu",
             "HEAT_JAX_NO_TENSORBOARD": "1"}
      proc = subprocess.run([sys.executable, "run.py", *args, f"--workdir={work}",
                             "--config.train.progress=False"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
      done[args] = (work, proc)
    work, proc = done[args]
    if check:
      assert proc.returncode == 0, f"run.py {' '.join(args)}:\n{proc.stderr[-4000:]}"
    return work, proc

  return run
