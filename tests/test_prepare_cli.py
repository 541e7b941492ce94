"""`python -m heat_jax.data.prepare`: absl flags, names and paths checked before TensorFlow."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heat_jax.data import prepare
from heat_jax.errors import ConfigError

ROOT = Path(__file__).parents[1]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "heat_jax.data.prepare", *args],
                        capture_output=True, text=True, timeout=120, cwd=ROOT,
                        env={**os.environ, **(env or {})})


def assert_one_error_line(proc, *needles):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  for needle in needles:
    assert needle in lines[0]
  return lines[0]


def test_help_lists_usage_and_flags():
  proc = cli("--help")
  assert proc.returncode == 0, proc.stderr
  for needle in ("python -m heat_jax.data.prepare dtd svhn --data_dir=DIR", "--data_dir",
                 "--manual_dir", "--[no]list", "VTAB ids"):
    assert needle in proc.stdout


def test_list_prints_the_19_tasks():
  proc = cli("--list")
  assert proc.returncode == 0
  assert len(proc.stdout.strip().splitlines()) == 19 and "resisc45" in proc.stdout


def test_unknown_task_is_named_before_tensorflow(tmp_path):
  line = assert_one_error_line(cli("dtdd", f"--data_dir={tmp_path}"), "unknown task 'dtdd'",
                               "did you mean 'dtd'")
  assert "TensorFlow" not in line


def test_data_dir_that_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  assert_one_error_line(cli("dtd", f"--data_dir={f}"), f"data dir {f} (from --data_dir) is a file")
  assert_one_error_line(cli("dtd", f"--data_dir={f}/sub"), "cannot be created", f"{f} is a file")


def test_data_dir_from_the_environment_is_checked(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  assert_one_error_line(cli("svhn", env={"TFDS_DATA_DIR": str(f)}), "(from $TFDS_DATA_DIR)")


def test_bad_flags_are_one_line():
  assert_one_error_line(cli("dtd", "--bogus"), "Unknown command line flag 'bogus'")
  assert_one_error_line(cli("dtd", "--list=maybe"), "--list")
  assert_one_error_line(cli(), "name at least one task")


def test_positional_names_mix_with_flags(tmp_path):
  # absl hands every positional argument to main, wherever the flags are
  assert_one_error_line(cli("dtd", f"--data_dir={tmp_path}", "svhn", "nosuch"),
                        "unknown task 'nosuch'")
  assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- direct calls


def check(tasks, data_dir="", manual_dir=""):
  return prepare.check_inputs(tasks, data_dir, manual_dir)


def test_raw_tfds_names_are_checked_without_tensorflow(tmp_path):
  with pytest.raises(ConfigError, match="'mnist:9.9.9': .*only: 3.0.1"):
    check(["mnist:9.9.9"], str(tmp_path))
  with pytest.raises(ConfigError, match="'dtd:abc': bad version 'abc'"):
    check(["dtd:abc"], str(tmp_path))
  with pytest.raises(ConfigError, match="'dtd/nocfg'"):
    check(["dtd/nocfg"], str(tmp_path))
  with pytest.raises(ConfigError, match="unknown task 'x_y_z': .*; see --list"):
    check(["all", "x_y_z"], str(tmp_path))


def test_valid_names_pass_to_the_tensorflow_check(tmp_path):
  new = tmp_path / "a" / "b"
  if HAS_TF:
    targets, data_dir = check(["cifar", "mnist:3.*.*"], str(new))
    assert targets == [("cifar100", "cifar100:3.*.*"), ("mnist:3.*.*", "mnist:3.*.*")]
  else:
    with pytest.raises(ConfigError, match="needs TensorFlow"):
      check(["cifar", "mnist:3.*.*"], str(new))
  assert not (tmp_path / "a").exists()   # checking creates nothing


def test_manual_dir_must_exist(tmp_path):
  with pytest.raises(ConfigError, match="--manual_dir=.*nope does not exist"):
    check(["resisc45"], str(tmp_path), str(tmp_path / "nope"))
  (tmp_path / "f").write_text("x")
  with pytest.raises(ConfigError, match="is not a directory"):
    check(["resisc45"], str(tmp_path), str(tmp_path / "f"))


def test_unwritable_data_dir(tmp_path, monkeypatch):
  # os.access is patched so that the test also means something when run as root
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path)
                      else real(p, mode))
  with pytest.raises(ConfigError, match="is not writable"):
    check(["dtd"], str(tmp_path))
  with pytest.raises(ConfigError, match=f"cannot be created \\({tmp_path} is not writable"):
    check(["dtd"], str(tmp_path / "new"))


def test_remote_data_dir_is_left_to_tfds():
  if HAS_TF:
    pytest.skip("TensorFlow is installed: the check would pass on to preparing")
  with pytest.raises(ConfigError, match="needs TensorFlow"):
    check(["dtd"], "gs://bucket/tfds")


def test_importing_defines_no_flags():
  code = ("import heat_jax.data.prepare as p; from absl import flags; "
          "print('manual_dir' in flags.FLAGS); p.define_flags(); print('manual_dir' in flags.FLAGS)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT).stdout.split()
  assert out == ["False", "True"]
