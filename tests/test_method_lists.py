"""Every method list a user reads comes from the registry (`available_methods()`)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from heat_jax.methods import available_methods, method_class

ROOT = Path(__file__).resolve().parents[1]


def _packaged() -> list[str]:
  """The methods heat_jax ships (tests may register toy ones in this process)."""
  return [m for m in available_methods()
          if method_class(m).__module__.startswith("heat_jax.methods.")]


def test_run_help_names_every_registered_method(tmp_path):
  packaged = _packaged()
  assert len(packaged) == 9 and {"hst", "kadaptation", "heat"} <= set(packaged)
  env = {**os.environ, "HEAT_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  line = next(l for l in proc.stdout.splitlines() if "--config.method.name=" in l)
  assert sorted(re.findall(r"[a-z]+", line.split("=", 1)[1])[1:]) == packaged, line


def test_sweep_help_names_every_registered_method():
  from heat_jax import sweep
  help_text = sweep.FLAGS["methods"].help
  assert all(m in re.findall(r"[a-z]+", help_text) for m in _packaged()), help_text
