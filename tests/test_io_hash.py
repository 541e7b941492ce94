"""`sha256_file`: cached in $HEAT_JAX_CACHE, never beside the input, invalidated on change."""

import builtins
import hashlib
import os

import pytest

from heat_jax import io_utils


@pytest.fixture
def cache(tmp_path, monkeypatch):
  root = tmp_path / "cache"
  monkeypatch.setenv("HEAT_JAX_CACHE", str(root))
  return root


@pytest.fixture
def reads(monkeypatch):
  """Paths opened by io_utils, in order (wraps the builtin `open` it uses)."""
  opened = []

  def counting_open(file, *args, **kwargs):
    opened.append(os.path.realpath(file))
    return builtins.open(file, *args, **kwargs)

  monkeypatch.setattr(io_utils, "open", counting_open, raising=False)
  return opened


def _input(tmp_path, data=b"weights" * 1000):
  folder = tmp_path / "user_checkpoints"
  folder.mkdir()
  path = folder / "model.npz"
  path.write_bytes(data)
  return folder, path


def test_hash_leaves_the_input_directory_unchanged(tmp_path, cache):
  folder, path = _input(tmp_path)
  before = sorted(os.listdir(folder))
  digest = io_utils.sha256_file(path)
  assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
  assert sorted(os.listdir(folder)) == before == ["model.npz"]
  assert len(list((cache / "sha256").iterdir())) == 1   # the entry lives in the cache


def test_second_call_uses_the_cache(tmp_path, cache, reads):
  _, path = _input(tmp_path)
  first = io_utils.sha256_file(path)
  assert reads.count(str(path.resolve())) == 1
  assert io_utils.sha256_file(path) == first
  assert io_utils.sha256_file(str(path.parent / ".." / path.parent.name / path.name)) == first
  assert reads.count(str(path.resolve())) == 1   # neither later call reread the file


def test_cache_is_invalidated_when_the_file_changes(tmp_path, cache, reads):
  _, path = _input(tmp_path)
  old = io_utils.sha256_file(path)
  st = path.stat()
  path.write_bytes(b"W" + path.read_bytes()[1:])               # same size ...
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))          # ... and the same mtime
  new = io_utils.sha256_file(path)
  assert new != old and new == hashlib.sha256(path.read_bytes()).hexdigest()
  path.write_bytes(b"longer" * 5000)
  assert io_utils.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
  assert reads.count(str(path.resolve())) == 3


def test_unusable_cache_still_hashes_and_writes_nothing_beside(tmp_path, monkeypatch):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("x")
  monkeypatch.setenv("HEAT_JAX_CACHE", str(blocker))
  folder, path = _input(tmp_path)
  assert io_utils.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
  assert os.listdir(folder) == ["model.npz"]


def test_corrupt_cache_entry_is_ignored(tmp_path, cache):
  _, path = _input(tmp_path)
  io_utils.sha256_file(path)
  (entry,) = (cache / "sha256").iterdir()
  entry.write_text("garbage\n")
  assert io_utils.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_from_a_local_checkpoint_leaves_its_folder_unchanged(tiny_config, tmp_path,
                                                                   cache):
  """experiment.run hashes the base checkpoint into the cache, not beside the file."""
  import json

  from heat_jax import artifacts, checkpoints, experiment
  from heat_jax.models import create_model
  user = tmp_path / "user_checkpoints"
  user.mkdir()
  model = create_model(tiny_config.model.name, 4, image_size=tiny_config.model.image_size)
  artifacts.export_merged(str(user / "mine.npz"), model, checkpoints.init_params(model))
  before = {p.name: p.stat().st_mtime_ns for p in user.iterdir()}

  tiny_config.model.pretrained = str(user / "mine.npz")
  tiny_config.method.name = "linear"
  tiny_config.train.epochs = 1
  tiny_config.train.max_steps = 1
  experiment.run(tiny_config, str(tmp_path / "run"), quiet=True)
  assert {p.name: p.stat().st_mtime_ns for p in user.iterdir()} == before
  recorded = json.dumps(json.loads((tmp_path / "run" / "results.json").read_text()))
  assert hashlib.sha256((user / "mine.npz").read_bytes()).hexdigest() in recorded
  assert len(list((cache / "sha256").iterdir())) == 1
