"""A catalogue of bad inputs through the real command lines.

Every case is a `python run.py ...` (or `python -m heat_jax.data.prepare ...`) command
line; each must exit with code 2, end stderr with one `error: ...` line naming the
problem (a distinctive substring per case), print no traceback, and leave nothing
behind: a workdir the run would have created does not exist afterwards, and a
pre-existing one (or a data / checkpoint / config folder it read) is unchanged.

The cases run in tests/cli_batch.py: one interpreter imports jax and heat_jax once and
forks a child per command line that runs run.py as `__main__` (absl parsing included).
`test_driver_matches_a_real_subprocess` checks a few cases against `python run.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heat_jax.testing.fake_checkpoints import vit_arrays, write_vit_npz

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/smoke.py", "--config.train.progress=False"]
MICRO = dict(hidden=32, layers=2, heads=2, mlp=64, patch=8, grid=4, num_classes=10)


def smoke(*args: str, method: str = "") -> list[str]:
  config = f"--config=configs/smoke.py:method={method}" if method else SMOKE[0]
  return [config, SMOKE[1], *args, "--workdir={w}"]


def folder(root: str) -> list[str]:
  return smoke("--config.data.source=folder", f"--config.data.folder_root={root}",
               "--config.data.train_split=train", "--config.data.test_split=test")


# (id, argv ({w} = this case's workdir, {d} = the fixture folder), expected substring,
#  options). Options: entry (default run.py), workdir 'fresh' (default: must not exist
#  afterwards) or 'existing' (a fixture folder that must be unchanged).
CASES: list[tuple[str, list[str], str, dict]] = [
    # --- flags and config files
    ("unknown_flag", ["--bogus", "--workdir={w}"], "Unknown command line flag 'bogus'", {}),
    ("positional_arg", [*smoke(), "extra"], "unexpected argument 'extra'", {}),
    ("missing_value", [*smoke(), "--config.model.pretrained"],
     "Missing value for flag --config.model.pretrained", {}),
    ("config_missing", ["--config=configs/nosuch.py", "--workdir={w}"],
     "configs/nosuch.py': the file does not exist", {}),
    ("config_syntax", ["--config={d}/cfg/syntax.py", "--workdir={w}"],
     "SyntaxError: invalid syntax (syntax.py, line 1)", {}),
    ("config_none", ["--config={d}/cfg/none.py", "--workdir={w}"],
     "returned NoneType, not an ml_collections.ConfigDict", {}),
    ("config_no_get_config", ["--config={d}/cfg/noget.py", "--workdir={w}"],
     "defines no get_config(arg) function", {}),
    ("config_raises", ["--config={d}/cfg/raises.py", "--workdir={w}"],
     "ZeroDivisionError: division by zero", {}),
    ("config_bad_arg", ["--config=configs/vtab.py:nosuch", "--workdir={w}"],
     "unknown VTAB task 'nosuch'", {}),
    ("config_bad_key", ["--config=configs/smoke.py:bogus=1", "--workdir={w}"],
     "unknown config argument 'bogus'", {}),
    ("unknown_field", smoke("--config.nosuch=1"), "unknown config field 'nosuch'", {}),
    ("wrong_type_int", smoke("--config.train.epochs=abc"),
     "config.train.epochs must be an integer, got 'abc'", {}),
    ("wrong_type_float", smoke("--config.optim.lr=fast"),
     "config.optim.lr must be a number, got 'fast'", {}),
    ("wrong_type_bool", smoke("--config.train.resume=maybe"),
     "config.train.resume must be True or False", {}),
    ("empty_workdir", [*smoke()[:-1], "--workdir="], "--workdir is empty", {}),
    ("default_is_demo", ["--config.study.seeds=0", "--workdir={w}"],
     "config.study.seeds=0 must be an integer >= 1", {}),
    # --- method options
    ("method_nosuch", smoke(method="nosuch"), "config.method.name='nosuch' is not one of", {}),
    ("heat_select", smoke("--config.heat.select=best"), "config.heat.select='best'", {}),
    ("heat_tune", smoke("--config.heat.tune=x"), "config.heat.tune='x' is not one of", {}),
    ("heat_scope", smoke("--config.heat.scope=block"), "config.heat.scope='block'", {}),
    ("heat_budget_too_big", smoke("--config.heat.budget=100"),
     "budget=100 exceeds the 4 heads of the model (ViT-micro: 2 layers of 2 heads)", {}),
    ("heat_layer_budget", smoke("--config.heat.scope=layer", "--config.heat.budget=5"),
     "budget=5 exceeds the 2 heads of layer 0", {}),
    ("heat_deactivate_all", smoke("--config.heat.deactivate=4"),
     "leaves no head to adapt", {}),
    ("heat_budget_zero", smoke("--config.heat.budget=0"), "budget must be >= 1 head", {}),
    ("heat_budget_fraction", smoke("--config.heat.budget=2.5"),
     "budget must be a count (integer) or a fraction", {}),
    ("heat_strategy", smoke("--config.importance.strategy=nosuch"),
     "config.importance.strategy='nosuch'", {}),
    ("heat_score_batch", smoke("--config.importance.batch_size=0"),
     "config.importance.batch_size must be >= 1", {}),
    ("lora_rank", smoke("--config.lora.rank=0", method="lora"),
     "config.lora.rank must be >= 1", {}),
    ("lora_targets", smoke("--config.lora.targets=out", method="lora"),
     "LoRA on 'out' is not supported", {}),
    ("adapter_style", smoke("--config.adapter.style=sideways", method="adapter"),
     "config.adapter.style='sideways'", {}),
    ("adapter_dim", smoke("--config.adapter.dim=0", method="adapter"),
     "config.adapter.dim must be >= 1", {}),
    ("vpt_on_swin", smoke("--config.model.name=Swin-micro", method="vpt"),
     "vpt is not supported on Swin", {}),
    ("vpt_mode", smoke("--config.vpt.mode=wide", method="vpt"), "config.vpt.mode='wide'", {}),
    ("merged_adapter", smoke("--config.train.export_merged=True", method="adapter"),
     "config.train.export_merged: method adapter", {}),
    # --- optimisation and training
    ("lr_nan", smoke("--config.optim.lr=nan"), "config.optim.lr must be a finite number", {}),
    ("lr_inf", smoke("--config.optim.lr=inf"), "config.optim.lr must be a finite number", {}),
    ("lr_zero", smoke("--config.optim.lr=0"), "config.optim.lr must be > 0", {}),
    ("clip_negative", smoke("--config.optim.clip_norm=-1"),
     "config.optim.clip_norm must be >= 0", {}),
    ("b2_one", smoke("--config.optim.b2=1"), "config.optim.b2 must be in [0, 1)", {}),
    ("wd_mask", smoke("--config.optim.wd_mask=some"), "config.optim.wd_mask='some'", {}),
    ("epochs_zero", smoke("--config.train.epochs=0"), "config.train.epochs must be >= 1", {}),
    ("batch_zero", smoke("--config.train.batch_size=0"), "batch_size and eval_batch_size", {}),
    ("batch_too_big", smoke("--config.train.batch_size=1000"),
     "batch_size=1000 is larger than the 128 training examples", {}),
    ("eval_every_zero", smoke("--config.train.eval_every_epochs=0"),
     "config.train.eval_every_epochs must be >= 1", {}),
    ("log_every_zero", smoke("--config.train.log_every_steps=0"),
     "config.train.log_every_steps must be >= 1", {}),
    ("ckpt_every_zero", smoke("--config.train.checkpoint_every_steps=0"),
     "config.train.checkpoint_every_steps must be >= 1", {}),
    ("max_steps_negative", smoke("--config.train.max_steps=-1"),
     "config.train.max_steps must be >= 0", {}),
    ("seed_negative", smoke("--config.seed=-1"), "config.seed must be an integer in [0", {}),
    # A linear probe at lr 1e38 overflows at step 2, after the workdir has filled up.
    ("diverges", smoke("--config.optim.lr=1e38", "--config.optim.warmup_epochs=0",
                       method="linear"),
     "training diverged: the loss or gradient norm is not finite at step 2", {}),
    ("diverges_in_user_dir", [*smoke("--config.optim.lr=1e38", "--config.optim.warmup_epochs=0",
                                     method="linear")[:-1], "--workdir={d}/user2"],
     "not finite at step 2", {"workdir": "existing"}),
    # --- model and checkpoint
    ("model_nosuch", smoke("--config.model.name=ViT-nosuch"), "unknown model 'ViT-nosuch'", {}),
    ("image_size_patch", smoke("--config.model.image_size=30"),
     "image_size=30 is not a multiple of ViT-micro's patch size 8", {}),
    ("image_size_zero", smoke("--config.model.image_size=0"),
     "config.model.image_size must be a positive integer", {}),
    ("classifier", smoke("--config.model.classifier=mean"), "config.model.classifier='mean'",
     {}),
    ("drop_path", smoke("--config.model.drop_path_rate=1.5"),
     "config.model.drop_path_rate must be in [0, 1)", {}),
    ("ckpt_missing", smoke("--config.model.pretrained=/nonexistent.npz"),
     "checkpoint file not found: /nonexistent.npz", {}),
    ("ckpt_unknown_name", smoke("--config.model.pretrained=ViT-nosuch"),
     "unknown checkpoint 'ViT-nosuch'", {}),
    ("ckpt_directory", smoke("--config.model.pretrained={d}/ckpt"), "is a directory", {}),
    ("ckpt_text_file", smoke("--config.model.pretrained={d}/ckpt/text.npz"), "text.npz", {}),
    ("ckpt_truncated", smoke("--config.model.pretrained={d}/ckpt/truncated.npz"),
     "truncated.npz", {}),
    ("ckpt_other_model", smoke("--config.model.pretrained={d}/ckpt/vit_tiny.npz"),
     "vit_tiny.npz", {}),
    ("ckpt_nan", smoke("--config.model.pretrained={d}/ckpt/nan.npz", method="lora"),
     "nan.npz holds NaN or infinite values", {}),
    # --- workdir
    ("workdir_file", [*smoke()[:-1], "--workdir={d}/afile"], "afile is a file", {}),
    ("workdir_under_file", [*smoke()[:-1], "--workdir={d}/afile/run"],
     "cannot be created: ", {}),
    ("workdir_unwritable", [*smoke()[:-1], "--workdir={unwritable}"], "{unwritable_msg}", {}),
    ("workdir_other_config", [*smoke("--config.seed=7")[:-1], "--workdir={d}/finished"],
     "holds a finished run with a different config", {"workdir": "existing"}),
    ("workdir_user_files", [*smoke("--config.model.image_size=30")[:-1],
                            "--workdir={d}/user"], "not a multiple", {"workdir": "existing"}),
    ("workdir_user_files_late", [*smoke("--config.train.batch_size=1000")[:-1],
                                 "--workdir={d}/user"], "larger than the 128",
     {"workdir": "existing"}),
    # --- data
    ("data_source", smoke("--config.data.source=tfrecord"),
     "config.data.source='tfrecord' is not one of", {}),
    ("value_range", smoke("--config.data.value_range=0_1"),
     "config.data.value_range='0_1' is not one of", {}),
    ("resize_method", smoke("--config.data.resize_method=lanczos"),
     "config.data.resize_method='lanczos'", {}),
    ("num_classes_negative", smoke("--config.data.num_classes=-3"),
     "num_classes=-3 must be an integer >= 0", {}),
    ("num_classes_wrong", smoke("--config.data.num_classes=5"), "num_classes=5", {}),
    ("synthetic_task", smoke("--config.data.task=nosuch"), "'nosuch' is not a synthetic task",
     {}),
    ("num_train_zero", smoke("--config.data.num_train=0"), "num_val < num_train", {}),
    ("num_val_too_big", smoke("--config.data.num_val=128"), "num_val < num_train", {}),
    ("test_split", smoke("--config.data.test_split=validation"), "test_split", {}),
    ("folder_root_empty", smoke("--config.data.source=folder"), "folder_root is empty", {}),
    ("folder_missing", folder("{d}/nosuch"), "nosuch' is not a directory", {}),
    ("folder_file", folder("{d}/afile"), "afile' is not a directory", {}),
    ("folder_empty", folder("{d}/empty"), "split 'train' not found", {}),
    ("folder_split", [*folder("{d}/mismatch"), "--config.data.test_split=tset"],
     "split 'tset' not found", {}),
    ("folder_class_mismatch", folder("{d}/mismatch"),
     "test/ has extra fox and missing dog", {}),
    ("folder_corrupt_image", folder("{d}/corrupt"), "1 of 4 images cannot be read", {}),
    # --- the demo study
    ("demo_tasks", ["--config=configs/demo.py:tasks=nosuch", "--workdir={w}"],
     "config.study.tasks: unknown 'nosuch'", {}),
    ("demo_seeds", ["--config=configs/demo.py:seeds=0", "--workdir={w}"],
     "config.study.seeds=0 must be an integer >= 1", {}),
    ("demo_budget", ["--config=configs/demo.py:budget=33", "--workdir={w}"], "budget=33", {}),
    ("demo_strategy", ["--config=configs/demo.py:strategy=nosuch", "--workdir={w}"], "nosuch",
     {}),
    ("demo_model", ["--config=configs/demo.py:model=ViT-nosuch", "--workdir={w}"],
     "unknown model 'ViT-nosuch'", {}),
    # --- the prepare CLI
    ("prepare_task", ["nosuchtask", "--data_dir={d}/tfds"], "unknown task 'nosuchtask'",
     {"entry": "module:heat_jax.data.prepare"}),
    ("prepare_data_dir_file", ["dtd", "--data_dir={d}/afile"], "is a file",
     {"entry": "module:heat_jax.data.prepare"}),
    ("prepare_no_task", [], "name at least one task", {"entry": "module:heat_jax.data.prepare"}),
]


# ----------------------------------------------------------------------------- fixtures


def _write_image(path: Path, color, fmt=None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (12, 12), color).save(path, fmt)


def _folder(root: Path, classes: dict[str, list[str]]) -> None:
  for split, names in classes.items():
    for k, name in enumerate(names):
      for i in range(2):
        _write_image(root / split / name / f"{i}.png", (40 * k, 90, 200 - 40 * k))


def _make_fixtures(d: Path) -> None:
  (d / "cfg").mkdir()
  (d / "cfg" / "syntax.py").write_text("def get_config(:\n  pass\n")
  (d / "cfg" / "none.py").write_text("def get_config(arg=None):\n  del arg\n")
  (d / "cfg" / "noget.py").write_text("CONFIG = 1\n")
  (d / "cfg" / "raises.py").write_text("def get_config(arg=None):\n  return 1 / 0\n")
  (d / "afile").write_text("not a directory\n")
  (d / "empty").mkdir()
  (d / "tfds").mkdir()
  _folder(d / "mismatch", {"train": ["cat", "dog"], "test": ["cat", "fox"]})
  _folder(d / "corrupt", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
  (d / "corrupt" / "test" / "dog" / "1.png").write_bytes(b"\x89PNG not really")
  ckpt = d / "ckpt"
  ckpt.mkdir()
  arrays = vit_arrays(**MICRO)
  arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"][0, 3] = np.nan
  np.savez(ckpt / "nan.npz", **arrays)
  (ckpt / "text.npz").write_text("these are not the weights you are looking for\n")
  write_vit_npz(ckpt / "good.npz", **MICRO)
  (ckpt / "truncated.npz").write_bytes((ckpt / "good.npz").read_bytes()[:2000])
  write_vit_npz(ckpt / "vit_tiny.npz", hidden=64, layers=4, heads=4, mlp=128, patch=4,
                grid=8, num_classes=10)
  for name in ("user", "user2"):
    (d / name).mkdir()
    (d / name / "notes.txt").write_text("the user's own file\n")
  finished = d / "finished"
  finished.mkdir()
  (finished / "results.json").write_text(json.dumps({"fingerprint": "another config",
                                                      "test_top1": 0.5}))


def _unwritable(d: Path) -> tuple[str, str]:
  """A workdir that cannot be created, and the expected words; root ignores modes."""
  if os.geteuid() != 0:
    locked = d / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return str(locked / "run"), "cannot be created (Permission denied)"
  path = "/sys/heat_jax_catalogue/run"
  try:
    os.makedirs(path)
  except OSError:
    return path, "cannot be created"
  os.rmdir(path)
  pytest.skip("running as root on a writable /sys: no unwritable directory to test with")


def _snapshot(path: Path) -> dict[str, str]:
  """Relative path -> content hash of every file and folder under `path`."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), path)] = "dir"
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _expand(text: str, values: dict[str, str]) -> str:
  for key, value in values.items():
    text = text.replace("{" + key + "}", value)
  return text


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
  """Runs every case once; returns {id: (result, workdir, expected, options, before)}."""
  d = tmp_path_factory.mktemp("catalogue")
  _make_fixtures(d)
  unwritable, unwritable_msg = _unwritable(d)
  values = {"d": str(d), "unwritable": unwritable, "unwritable_msg": unwritable_msg}
  env = {"HEAT_JAX_CACHE": str(tmp_path_factory.mktemp("cache")), "HEAT_JAX_NO_TENSORBOARD": "1",
         "HF_HUB_OFFLINE": "1", "HEAT_JAX_VIT_MODELS_URL": "http://127.0.0.1:9",
         "TFDS_DATA_DIR": str(d / "tfds")}
  repo_workdirs = _snapshot(ROOT / "workdirs") if (ROOT / "workdirs").exists() else None
  before = _snapshot(d)
  jobs, meta = [], {}
  for i, (name, argv, expected, options) in enumerate(CASES):
    values["w"] = str(d / "runs" / name)
    jobs.append({"argv": [_expand(a, values) for a in argv], "env": env,
                 "entry": options.get("entry", "run.py")})
    meta[name] = (i, values["w"], _expand(expected, values), options)
  (d / "cases.json").write_text(json.dumps(jobs))
  out = d / "out"
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_batch.py"),
                         str(d / "cases.json"), str(out), "4"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = _snapshot(d)
  results = {}
  for name, (i, workdir, expected, options) in meta.items():
    results[name] = (json.loads((out / f"{i}.json").read_text()), workdir, expected, options)
  changed = sorted(k for k in set(before) | set(after)
                   if before.get(k) != after.get(k) and not k.startswith(("out", "runs",
                                                                          "cases.json")))
  repo_after = _snapshot(ROOT / "workdirs") if (ROOT / "workdirs").exists() else None
  return {"results": results, "changed": changed, "runs": d / "runs",
          "repo_workdirs_changed": repo_after != repo_workdirs}


# ----------------------------------------------------------------------------- tests


def test_catalogue_is_large_and_ids_unique():
  names = [c[0] for c in CASES]
  assert len(names) >= 50 and len(set(names)) == len(names)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bad_input_fails_with_one_line(catalogue, name):
  result, workdir, expected, options = catalogue["results"][name]
  stderr, stdout = result["stderr"], result["stdout"]
  assert result["rc"] == 2, f"exit {result['rc']}\n{stderr[-3000:]}"
  assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: "), stderr[-3000:]
  assert sum(l.startswith("error:") for l in lines) == 1, stderr[-3000:]
  assert expected in lines[-1], lines[-1]
  if options.get("workdir", "fresh") == "fresh":
    assert not os.path.exists(workdir), sorted(os.listdir(workdir))


def test_nothing_left_behind(catalogue):
  """Fixture folders (data, checkpoints, pre-existing workdirs) are unchanged, and no
  run created a workdir of its own or wrote under the repository's workdirs/."""
  assert catalogue["changed"] == []
  runs = catalogue["runs"]
  assert not runs.exists() or not os.listdir(runs), sorted(os.listdir(runs))
  assert not catalogue["repo_workdirs_changed"]


@pytest.mark.parametrize("name", ["config_syntax", "heat_budget_too_big", "workdir_file"])
def test_driver_matches_a_real_subprocess(catalogue, tmp_path, name):
  """The batch driver answers like `python run.py` in a process of its own."""
  result, workdir, _, _ = catalogue["results"][name]
  argv = json.loads((catalogue["runs"].parent / "cases.json").read_text())[
      [c[0] for c in CASES].index(name)]
  proc = subprocess.run([sys.executable, "run.py", *argv["argv"]], cwd=ROOT,
                        env={**os.environ, **argv["env"]}, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == result["rc"] == 2
  assert proc.stderr.strip().splitlines()[-1] == result["stderr"].strip().splitlines()[-1]
  assert not os.path.exists(workdir)
