"""heat_jax ViT == timm on the committed golden fixtures (no torch needed here).

`tools/make_vit_fixtures.py` wrote, for each case, timm's float64 logits on synthetic
weights in the exact vit_jax / big_vision `.npz` layouts, loaded by timm's own npz
loader. Here the same weights and images are regenerated from the seeds, loaded with
`heat_jax.checkpoints.load_pretrained`, and heat_jax's float32 logits must agree to
1e-4. The head is copied from the file by hand (the fixtures' class count may differ).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from heat_jax.io_utils import write_npz
from heat_jax.testing import vit_golden

FIXTURES = Path(__file__).parent / "fixtures" / "vit_timm"
CASE_FILES = sorted(FIXTURES.glob("*.json"))
TOLERANCE = 1e-4
# Full-size cases (regenerate ~90-330 MB of weights) carry the `slow` marker.
CASE_PARAMS = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow]
                            if json.loads(p.read_text()).get("full_size") else [])
               for p in CASE_FILES]


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
  """Writes a case's synthetic npz once; full-size files are shared and replaced."""
  cache: dict[str, tuple[Path, dict]] = {}
  root = tmp_path_factory.mktemp("vit_golden")

  def get(case: dict) -> tuple[Path, dict]:
    key = json.dumps(case["arrays"], sort_keys=True)
    if key not in cache:
      if case.get("full_size"):  # keep at most one ~330 MB file around
        for old_key in [k for k, (p, _) in cache.items() if p.stat().st_size > 50e6]:
          cache.pop(old_key)[0].unlink()
      arrays = vit_golden.case_arrays(case)
      path = root / f"{len(cache)}_{case['name']}.npz"
      write_npz(path, arrays)
      cache[key] = (path, arrays)
    return cache[key]

  return get


def test_fixtures_present_and_small():
  names = {p.stem for p in CASE_FILES}
  required = {"vit_jax_token", "vit_jax_opt_target", "vit_jax_pre_logits",
              "big_vision_token", "big_vision_gap_scanned", "vit_jax_posemb_resize",
              "ViT-B_16_224_vit_jax"}
  assert required <= names, f"missing fixtures: {sorted(required - names)}"
  assert sum(1 for p in CASE_FILES if json.loads(p.read_text()).get("full_size")) >= 2
  total = sum(p.stat().st_size for p in FIXTURES.iterdir())
  assert total < 1_000_000, f"fixtures take {total} bytes"


@pytest.mark.parametrize("case_file", CASE_PARAMS)
def test_logits_equal_timm(case_file: Path, checkpoint_files):
  case = json.loads(case_file.read_text())
  with np.load(case_file.with_suffix(".npz"), allow_pickle=False) as data:
    expected = data["logits"]
  path, arrays = checkpoint_files(case)
  images = vit_golden.case_images(case)
  # The regenerated inputs must be exactly what timm saw.
  assert vit_golden.fingerprint(arrays) == pytest.approx(
      case["fingerprints"]["weights"], rel=1e-9), "numpy RNG stream changed: rerun the tool"
  assert vit_golden.fingerprint(images) == pytest.approx(
      case["fingerprints"]["images"], rel=1e-9), "numpy RNG stream changed: rerun the tool"

  logits = vit_golden.heat_jax_logits(case, path, arrays, images)

  assert logits.dtype == np.float32
  assert logits.shape == expected.shape == (case["images"]["count"],
                                            case["arrays"]["num_classes"])
  diff = float(np.abs(logits.astype(np.float64) - expected).max())
  assert diff <= TOLERANCE, f"{case['name']}: max abs diff {diff:.3g} vs timm"
  # Guard against a vacuous comparison (e.g. all-zero logits on both sides).
  assert np.abs(expected).max() > 0.1
