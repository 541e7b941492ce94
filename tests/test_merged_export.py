"""`--config.train.export_merged=True` through run.py for EVERY mergeable method.

The variants are every registered method (`available_methods()`) with its defaults,
plus the extra settings listed in EXTRA_VARIANTS; whether a variant is mergeable is
asked of the method itself, so a method added later is covered without editing this
file. A mergeable variant's merged file, loaded into the plain model (no extensions)
by heat_jax's checkpoint loader, must give the logits of the adapter-loaded model
(extensions unmerged). A variant that is not mergeable must fail at once, exit 2.
"""

from __future__ import annotations

import numpy as np
import pytest

from configs import smoke
from heat_jax.methods import available_methods, get_method

# Settings that change what a method adds to the model (beyond its defaults).
EXTRA_VARIANTS = {"heat": [{"heat.tune": "lora"}]}
RUN = ("--config.train.epochs=1", "--config.train.export_merged=True")


def _variants() -> tuple[list, list]:
  mergeable, not_mergeable = [], []
  for name in available_methods():
    for fields in [{}, *EXTRA_VARIANTS.get(name, [])]:
      config = smoke.get_config(f"method={name}")
      config.update_from_flattened_dict(fields)
      flags = tuple(f"--config.{k}={v}" for k, v in fields.items())
      target = mergeable if get_method(config).mergeable else not_mergeable
      target.append(pytest.param(name, flags, id="-".join(
          [name, *(f"{k}={v}" for k, v in fields.items())])))
  return mergeable, not_mergeable


MERGEABLE, NOT_MERGEABLE = _variants()


def test_the_variants_cover_the_methods_named_in_the_issue():
  ids = {p.id for p in MERGEABLE}
  for name in ("linear", "full", "bitfit", "lora", "heat", "heat-heat.tune=lora"):
    assert name in ids, ids


@pytest.mark.parametrize("method,overrides", MERGEABLE)
def test_merged_export_through_run_py_matches_the_adapter(cli_run, method, overrides):
  from heat_jax import artifacts, checkpoints, model_spec
  from heat_jax.io_utils import load_npz
  work, _ = cli_run(f"--config=configs/smoke.py:method={method}", *overrides, *RUN)
  model, variables = artifacts.load_adapter(str(work))
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, images, train=False))
  assert np.abs(want).max() > 1e-3   # a trained classifier: not 0 == 0

  meta = artifacts.read_adapter_json(str(work))
  plain = model_spec.model_from_spec({**meta["model"], "extensions": []})
  merged = work / artifacts.merged_filename(plain.family)
  params = checkpoints.load_pretrained(str(merged), plain)   # same class count: its head
  got = np.asarray(plain.apply({"params": params}, images, train=False))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  arrays = load_npz(merged)
  np.testing.assert_array_equal(params["head"]["kernel"], arrays["head/kernel"])


def test_merged_file_for_another_class_count_gets_a_fresh_head(cli_run, caplog):
  """Loading the merged file into a model with other classes: a fresh head, one log line;
  keep_head=False (what training runs use) never takes the file's head."""
  import logging

  from heat_jax import artifacts, checkpoints, model_spec
  work, _ = cli_run("--config=configs/smoke.py:method=lora", *RUN)
  meta = artifacts.read_adapter_json(str(work))
  classes = meta["model"]["num_classes"]
  merged = str(work / "merged.npz")
  caplog.set_level(logging.INFO, logger="absl")
  other = model_spec.model_from_spec({**meta["model"], "extensions": [],
                                      "num_classes": classes + 3})
  params = checkpoints.load_pretrained(merged, other)
  assert params["head"]["kernel"].shape[-1] == classes + 3
  assert not np.abs(params["head"]["kernel"]).any()   # vit_jax's zero head init
  assert (f"its classifier ({classes} classes) does not fit the model's {classes + 3} "
          "classes; the head is initialised afresh") in caplog.text
  same = model_spec.model_from_spec({**meta["model"], "extensions": []})
  fresh = checkpoints.load_pretrained(merged, same, keep_head=False)
  assert not np.abs(fresh["head"]["kernel"]).any()


@pytest.mark.parametrize("method,overrides", NOT_MERGEABLE)
def test_unmergeable_method_refuses_export_at_once(cli_run, method, overrides):
  work, proc = cli_run(f"--config=configs/smoke.py:method={method}", *overrides, *RUN,
                       check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "export_merged" in lines[0], proc.stderr
  assert not work.exists()   # refused before any directory was made
