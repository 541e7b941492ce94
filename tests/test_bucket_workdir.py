"""Workdirs on buckets (`--workdir=gs://...`) through etils.epath.

No bucket is reachable here: `epath.testing.mock_epath` routes every epath call for
gs:// paths to a local folder, so the code paths heat_jax takes for a bucket (one
upload per file, no rename, no append) run against real files. Anything that
bypassed epath would create a literal `gs:` folder in the working directory, which
the tests check is absent. Orbax (TensorStore) talks to buckets itself and is not
covered; a full run with an `epath.Path` workdir is.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from heat_jax import artifacts, checkpoints, experiment, model_spec
from heat_jax.io_utils import atomic_open, load_npz, read_json, write_json, write_npz
from heat_jax.models import create_model
from heat_jax.training import partition
from heat_jax.training.metrics import MetricWriter

_CALLS = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open",
          "remove", "rename", "replace", "rmtree", "stat", "walk")


@contextlib.contextmanager
def fake_bucket(root: Path):
  """gs://<path> -> root/<path> for every epath call; records the gs:// paths seen."""
  seen: list[str] = []

  def local(p):
    if isinstance(p, (str, os.PathLike)) and os.fspath(p).startswith("gs://"):
      seen.append(os.fspath(p))
      return str(root / os.fspath(p)[len("gs://"):])
    return p

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *[local(a) for a in args], **kwargs)

  def open_object(original, path, mode):
    target = local(path)
    if target != path and ("w" in mode or "a" in mode):   # a bucket has no folders
      os.makedirs(os.path.dirname(target), exist_ok=True)
    return original(target, mode)

  calls = {name: redirect for name in _CALLS}
  calls["open"] = open_object
  with epath_testing.mock_epath(**calls):
    yield seen


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)   # a bypass of epath would write cwd/gs:/...
  root = tmp_path / "bucket_root"
  with fake_bucket(root) as seen:
    yield root, seen
  assert not (cwd / "gs:").exists(), "something wrote gs:// paths without epath"


def test_io_helpers_write_whole_objects(bucket):
  root, seen = bucket
  write_json("gs://b/run/a.json", {"x": 1})
  assert read_json("gs://b/run/a.json") == {"x": 1}
  assert json.loads((root / "b/run/a.json").read_text()) == {"x": 1}
  write_npz("gs://b/run/w.npz", {"k": np.arange(3, dtype=np.float32)})
  np.testing.assert_array_equal(load_npz("gs://b/run/w.npz")["k"], [0, 1, 2])
  with pytest.raises(RuntimeError):
    with atomic_open("gs://b/run/half.txt", "w") as f:
      f.write("partial")
      raise RuntimeError("interrupted")
  assert not (root / "b/run/half.txt").exists()   # nothing uploaded
  assert not list((root / "b/run").glob(".*.tmp"))   # no temporary objects either
  assert "gs://b/run/w.npz" in seen


def test_adapter_files_round_trip_on_a_bucket(bucket):
  root, _ = bucket
  model = create_model("ViT-micro", 3)
  params = checkpoints.init_params(model, rng=jax.random.key(0))
  flat = partition.flatten(params)
  trained = {k: np.asarray(v) + (0.25 if k.startswith("head/") else 0.0)
             for k, v in flat.items()}
  mask = {k: k.startswith("head/") for k in flat}
  artifacts.export_adapter(
      "gs://b/run", partition.unflatten(trained), mask,
      model_spec=model_spec.spec_of("ViT-micro", 3, {}),
      base={"checkpoint": None, "init_seed": 0, "interpolation": "zoom"})
  assert (root / "b/run/adapter_config.json").exists()
  assert (root / "b/run/adapter_model.safetensors").exists()
  _, variables = artifacts.load_adapter("gs://b/run")
  np.testing.assert_array_equal(variables["params"]["head"]["bias"], trained["head/bias"])
  artifacts.export_merged("gs://b/run/merged.npz", model, partition.unflatten(trained))
  assert "head/kernel" in load_npz(root / "b/run/merged.npz")


def test_metrics_on_a_bucket_are_uploaded_whole(bucket, monkeypatch):
  monkeypatch.setenv("HEAT_JAX_NO_TENSORBOARD", "1")
  root, _ = bucket
  writer = MetricWriter("gs://b/run")
  for step in (1, 2, 3):
    writer.write(step, {"loss": float(step)})
  assert not (root / "b/run/metrics.jsonl").exists()   # no append on a bucket
  writer.flush()
  assert len((root / "b/run/metrics.jsonl").read_text().splitlines()) == 3
  writer.close()
  resumed = MetricWriter("gs://b/run", resume_step=2)   # drops the lines past step 2
  resumed.write(3, {"loss": 0.5})
  resumed.close()
  lines = [json.loads(l) for l in (root / "b/run/metrics.jsonl").read_text().splitlines()]
  assert [(l["step"], l["loss"]) for l in lines] == [(1, 1.0), (2, 2.0), (3, 0.5)]


def test_finished_results_and_clearing_on_a_bucket(bucket, tiny_config):
  root, _ = bucket
  write_json("gs://b/run/results.json", {"fingerprint": "abc", "test_top1": 0.5})
  write_json("gs://b/run/adapter.json", {})
  write_json("gs://b/run/adapter.npz", {})   # present: the run's artifacts are complete
  assert experiment.finished_results(tiny_config, "gs://b/run", "abc")["test_top1"] == 0.5
  experiment.clear_run_files("gs://b/run")
  assert not (root / "b/run/results.json").exists()
  assert not (root / "b/run/adapter.json").exists()
  assert experiment.finished_results(tiny_config, "gs://b/run", "abc") is None


def test_a_run_takes_an_epath_workdir(tiny_config, tmp_path):
  tiny_config.method.name = "lora"
  tiny_config.train.epochs = 1
  workdir = epath.Path(tmp_path) / "run"
  results = experiment.run(tiny_config, workdir, quiet=True)
  for name in ("results.json", "adapter_config.json", "metrics.jsonl", "checkpoints"):
    assert (tmp_path / "run" / name).exists(), name
  again = experiment.run(tiny_config, os.fspath(workdir), quiet=True)   # FINISHED
  assert again["test_top1"] == results["test_top1"]
