"""A catalogue of the faults of real use: preemption, full disks, two runs, hostile files.

Two parts:
  * FAULTS: every fault of issue 24 with its one-line outcome and the test that
    produces it (`test_every_fault_has_a_test` fails if a named test disappears);
  * CASES: the faults that end in one line right away, as command lines of run.py and
    heat_jax.predict on files crafted here, run in tests/cli_batch.py like
    tests/test_cli_catalogue.py: exit 2, stderr ending in one `error: ...` line with a
    distinctive substring, no traceback, nothing left behind (a fresh workdir does not
    exist afterwards; a finished run's workdir is unchanged).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli_catalogue import _snapshot
from tests.test_hostile_files import npz_claiming, png_claiming

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/smoke.py", "--config.train.progress=False"]

# (fault, outcome, test file, test name)
FAULTS: list[tuple[str, str, str, str]] = [
    ("SIGTERM mid-training", "checkpoint at the current step, exit 75, rerun bit-equal",
     "test_preemption.py", "test_sigterm_saves_exits_75_and_the_rerun_is_bit_equal"),
    ("SIGINT + SIGTERM during the preemption save", "held until the save is committed; "
     "exit 75, checkpoint restorable", "test_preemption.py",
     "test_sigterm_saves_exits_75_and_the_rerun_is_bit_equal"),
    ("SIGTERM before the first step", "exit 75, nothing left (no step to save)",
     "test_preemption.py", "test_sigterm_before_training_exits_75_and_leaves_nothing"),
    ("SIGTERM to one process of two", "both save the same step (agreed by an all-process "
     "max), exit 75; rerun = one-process run", "test_preemption.py",
     "test_sigterm_to_one_of_two_processes_stops_both_at_one_step"),
    ("SIGTERM to a sweep", "passed on; jobs recorded interrupted (no failed.json); sweep "
     "exits 75", "test_failures.py", "test_sweep_forwards_sigterm_and_marks_divergence_failed"),
    ("disk full writing a file (injected ENOSPC)", "StorageError: path, space needed and "
     "free; previous file kept, no temporary left", "test_failures.py",
     "test_injected_enospc_keeps_the_previous_file_and_names_the_space"),
    ("workdir vanishes during a write", "StorageError 'its folder does not exist'",
     "test_failures.py", "test_vanished_folder_is_one_line"),
    ("disk full during an adapter export", "error: cannot write .../adapter_model."
     "safetensors: the disk is full; rerun finalizes from the last checkpoint",
     "test_failures.py", "test_disk_full_during_an_export_then_rerun_finishes"),
    ("disk full during a checkpoint (real 3 MB tmpfs)", "error: cannot write ...: the disk "
     "is full; previous checkpoint kept and resumed", "test_failures.py",
     "test_real_full_disk_during_a_checkpoint_keeps_the_previous_one"),
    ("second run on a busy workdir", "error: workdir W is in use by another run (pid, "
     "host); a SIGKILLed holder frees it", "test_failures.py",
     "test_second_run_on_a_workdir_refuses_and_a_killed_run_frees_it"),
    ("divergence (NaN / inf loss)", "error: training diverged ... at step N; last finite "
     "checkpoint kept", "test_failures.py",
     "test_divergence_never_saves_a_non_finite_checkpoint"),
    ("non-finite parameters at a save", "TrainingError; never saved", "test_failures.py",
     "test_a_non_finite_state_is_never_saved"),
    ("diverging sweep job", "failed.json with the 'training diverged' line",
     "test_failures.py", "test_sweep_forwards_sigterm_and_marks_divergence_failed"),
    ("decompression-bomb image", "refused before decoding, one line", "test_hostile_files.py",
     "test_decompression_bomb_is_one_line_before_decoding"),
    ("truncated image", "named, one line", "test_hostile_files.py",
     "test_truncated_image_is_named"),
    ("grayscale / CMYK / palette / RGBA image", "converted to RGB", "test_hostile_files.py",
     "test_modes_become_rgb"),
    ("16-bit image", "scaled to 8 bits (not clipped)", "test_hostile_files.py",
     "test_sixteen_bit_is_scaled_not_clipped"),
    ("EXIF-rotated photo", "shown upright", "test_hostile_files.py",
     "test_exif_orientation_is_applied"),
    ("symlink loops in an image folder", "listing ends; loops are not images",
     "test_hostile_files.py", "test_symlink_loops_in_image_folders_end"),
    ("npz header claiming terabytes", "refused before any allocation",
     "test_hostile_files.py",
     "test_npz_header_claiming_terabytes_is_refused_without_allocating"),
    ("safetensors header claiming absurd sizes", "CheckpointError naming the file",
     "test_hostile_files.py", "test_safetensors_with_absurd_header_is_a_checkpoint_error"),
    ("adapter_config.json base: URL / '..' / device", "never fetched or opened unasked",
     "test_hostile_files.py", "test_recorded_base_is_never_fetched_or_opened_unasked"),
    ("the CLI cases below", "one line each", "test_failure_catalogue.py",
     "test_fault_fails_with_one_line"),
]

# (id, entry, argv ({w} = fresh workdir, {d} = fixture folder, {run} = a finished run),
#  expected substring, options: workdir 'fresh' (must not exist afterwards) / 'none')
CASES: list[tuple[str, str, list[str], str, dict]] = [
    ("folder_bomb_test_split", "run.py",
     [*SMOKE, "--config.data.source=folder", "--config.data.folder_root={d}/bomb",
      "--config.data.train_split=train", "--config.data.test_split=test", "--workdir={w}"],
     "more pixels than the limit of 89,478,485 (a decompression bomb?)", {}),
    ("folder_bomb_train_split", "run.py",
     [*SMOKE, "--config.data.source=folder", "--config.data.folder_root={d}/bomb",
      "--config.data.train_split=test", "--config.data.test_split=train", "--workdir={w}"],
     "a decompression bomb?", {}),
    ("folder_truncated", "run.py",
     [*SMOKE, "--config.data.source=folder", "--config.data.folder_root={d}/truncated",
      "--config.data.train_split=train", "--config.data.test_split=test", "--workdir={w}"],
     "{d}/truncated/test/dog/0.jpg", {}),
    ("pretrained_npz_absurd", "run.py",
     [*SMOKE, "--config.model.pretrained={d}/absurd.npz", "--workdir={w}"],
     "claims shape (1000000000000,)", {}),
    ("pretrained_safetensors_absurd", "run.py",
     [*SMOKE, "--config.model.name=Swin-micro", "--config.model.pretrained={d}/absurd.safetensors",
      "--workdir={w}"], "absurd.safetensors", {}),
    ("predict_bomb", "module:heat_jax.predict", ["--workdir={run}", "{d}/bomb/test/cat/0.png"],
     "a decompression bomb?", {"workdir": "none"}),
    ("predict_truncated", "module:heat_jax.predict",
     ["--workdir={run}", "{d}/truncated/test/dog/0.jpg"], "truncated/test/dog/0.jpg", {"workdir": "none"}),
    ("predict_base_url", "module:heat_jax.predict",
     ["--workdir={d}/run_url", "--noprogress", "{d}/ok.png"], "names its base checkpoint by URL",
     {"workdir": "none"}),
    ("predict_base_escapes", "module:heat_jax.predict",
     ["--workdir={d}/run_escape", "--noprogress", "{d}/ok.png"], "climbs out of its folder",
     {"workdir": "none"}),
    ("predict_adapter_nan", "module:heat_jax.predict",
     ["--workdir={d}/run_nan", "--noprogress", "{d}/ok.png"], "holds NaN or infinite values",
     {"workdir": "none"}),
]


def _folder(root: Path, bad: str, write_bad) -> None:
  for split in ("train", "test"):
    for k, name in enumerate(("cat", "dog")):
      for i in range(2):
        path = root / split / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (60 * k, 90, 30 * i)).save(path)
  write_bad(root / "test" / bad)


def _truncated(path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(path.with_suffix(".jpg"))
  p = path.with_suffix(".jpg")
  p.write_bytes(p.read_bytes()[:300])


def _edit_adapter(src: Path, dst: Path, edit) -> None:
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", ".heat_jax.lock"))
  edit(dst)


def _set_base(name: str):
  def edit(d: Path) -> None:
    path = d / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["base_model"]["checkpoint"] = name
    path.write_text(json.dumps(meta))
  return edit


def _nan_weights(d: Path) -> None:
  from safetensors.numpy import load, save
  path = d / "adapter_model.safetensors"
  arrays = dict(load(path.read_bytes()))
  key = sorted(k for k in arrays if arrays[k].dtype.kind == "f")[0]
  arrays[key] = arrays[key].copy()
  arrays[key].flat[0] = np.nan
  path.write_bytes(save(arrays, metadata={"format": "heat_jax.peft_style.v1"}))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
  d = tmp_path_factory.mktemp("faults")
  cache = tmp_path_factory.mktemp("cache")
  env = {"HEAT_JAX_CACHE": str(cache), "HEAT_JAX_NO_TENSORBOARD": "1", "HF_HUB_OFFLINE": "1",
         "HEAT_JAX_VIT_MODELS_URL": "http://127.0.0.1:9", "JAX_PLATFORMS": "cpu"}
  run = d / "run"
  proc = subprocess.run([sys.executable, "run.py", "--config=configs/smoke.py:method=linear",
                         "--config.train.progress=False", "--config.train.epochs=1",
                         f"--workdir={run}"], cwd=ROOT, env={**os.environ, **env},
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  _folder(d / "bomb", "cat/0.png", lambda p: png_claiming(p, 100_000, 100_000))
  _folder(d / "truncated", "dog/0.png", _truncated)
  (d / "truncated" / "test" / "dog" / "0.png").unlink()
  npz_claiming(d / "absurd.npz", (10 ** 12,))
  (d / "absurd.safetensors").write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
  Image.new("RGB", (32, 32), (9, 9, 9)).save(d / "ok.png")
  _edit_adapter(run, d / "run_url", _set_base("https://example.invalid/ViT-B_16.npz"))
  _edit_adapter(run, d / "run_escape", _set_base("../../../../../../tmp/x/ViT-B_16.npz"))
  _edit_adapter(run, d / "run_nan", _nan_weights)
  values = {"d": str(d), "run": str(run)}
  before = _snapshot(d)
  jobs, meta = [], {}
  for i, (name, entry, argv, expected, options) in enumerate(CASES):
    values["w"] = str(d / "runs" / name)
    expand = lambda t: t.format(**values)  # noqa: E731
    jobs.append({"argv": [expand(a) for a in argv], "env": env, "entry": entry})
    meta[name] = (i, values["w"], expand(expected), options)
  (d / "cases.json").write_text(json.dumps(jobs))
  out = d / "out"
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_batch.py"),
                         str(d / "cases.json"), str(out), "2"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = _snapshot(d)
  changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                   and not k.startswith(("out", "runs", "cases.json")))
  results = {name: (json.loads((out / f"{i}.json").read_text()), w, e, o)
             for name, (i, w, e, o) in meta.items()}
  return {"results": results, "changed": changed}


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_fault_fails_with_one_line(catalogue, name):
  result, workdir, expected, options = catalogue["results"][name]
  stderr = result["stderr"]
  assert result["rc"] == 2, f"exit {result['rc']}\n{stderr[-3000:]}"
  assert "Traceback" not in stderr + result["stdout"], stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: "), stderr[-3000:]
  assert sum(l.startswith("error:") for l in lines) == 1, stderr[-3000:]
  assert expected in lines[-1], lines[-1]
  if options.get("workdir", "fresh") == "fresh":
    assert not os.path.exists(workdir), sorted(os.listdir(workdir))


def test_nothing_changed(catalogue):
  assert catalogue["changed"] == []


def test_every_fault_has_a_test():
  ids = [c[0] for c in CASES]
  assert len(set(ids)) == len(ids) and len(FAULTS) >= 20
  for fault, outcome, filename, test in FAULTS:
    tree = ast.parse((ROOT / "tests" / filename).read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert test in names, f"{fault}: {filename} has no {test}"
    assert outcome
