"""heat_jax's timm-named ViTs == timm (and transformers) on committed fixtures, no torch.

`tools/make_timm_vit_fixtures.py` wrote tiny random-init timm models of each
architecture (every parameter perturbed, LayerScale far from its init) as timm
`.safetensors`, and timm's float64 logits on seeded images; resample cases were
loaded by timm's own `checkpoint_filter_fn` at another grid (as a 518 px DINOv2 file
used at 224 px). HF cases hold the same weights written by transformers'
`save_pretrained` (`Dinov2Model`, `ViTModel`) and HF's own features through the
timm head. Here heat_jax loads each file with `load_pretrained` (the head is copied
from the timm file; load_pretrained always re-initialises it) and must agree to 1e-4
relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from heat_jax.checkpoints import hf_vit, load_pretrained
from heat_jax.errors import CheckpointError
from heat_jax.models import create_model, model_family

FIXTURES = Path(__file__).parent / "fixtures" / "timm_vit"
CASES = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
RELATIVE = 1e-4


def _images(case: dict) -> np.ndarray:
  rng = np.random.default_rng(case["images"]["seed"])
  x = rng.uniform(-1.5, 1.5, (case["images"]["count"], case["size"], case["size"], 3))
  x = x.astype(np.float32)
  assert float(x.astype(np.float64).sum()) == pytest.approx(case["images_sum"], rel=1e-9), (
      "numpy RNG stream changed: rerun tools/make_timm_vit_fixtures.py")
  return x


def _model(case: dict):
  return create_model(case["arch"], case["num_classes"], image_size=case["size"],
                      **case["heat"])


def _with_timm_head(params: dict, case: dict) -> dict:
  timm_file = FIXTURES / f"{case['of'] or case['name']}.safetensors"
  state = load_file(str(timm_file))
  params = dict(params)
  params["head"] = {"kernel": state["head.weight"].astype(np.float32).T,
                    "bias": state["head.bias"].astype(np.float32)}
  return params


def _check(model, params, case: dict) -> float:
  expected = np.load(FIXTURES / f"{case['name']}.npz", allow_pickle=False)["logits"]
  logits = np.asarray(jax.jit(model.apply)({"params": params}, _images(case)))
  assert logits.shape == expected.shape == (case["images"]["count"], case["num_classes"])
  rel = float(np.abs(logits - expected).max() / np.abs(expected).max())
  assert rel < RELATIVE, f"{case['name']}: relative difference {rel:.2e}"
  return rel


def test_fixtures_cover_every_architecture_and_stay_small():
  archs = {c["arch"] for c in CASES}
  assert {"vit_small_patch14_dinov2", "vit_base_patch14_reg4_dinov2",
          "deit_small_patch16_224", "vit_base_patch16_clip_224",
          "vit_base_patch32_clip_quickgelu_224", "vit_base_patch16_224",
          "vit_medium_patch16_gap_256"} <= archs
  assert any(c["file_size"] != c["size"] and not c["hf"] for c in CASES)   # timm resample
  assert any(c["file_size"] != c["size"] and c["hf"] for c in CASES)       # HF run time
  total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
  assert total < 1_200_000, f"fixtures take {total} bytes"


@pytest.mark.parametrize("case", [c for c in CASES if not c["hf"]], ids=lambda c: c["name"])
def test_timm_file_logits_equal_timm(case):
  model = _model(case)
  assert model_family(case["arch"]) == "timm_vit"
  params = load_pretrained(FIXTURES / f"{case['name']}.safetensors", model)
  _check(model, _with_timm_head(params, case), case)


@pytest.mark.parametrize("case", [c for c in CASES if c["hf"]], ids=lambda c: c["name"])
def test_hf_file_logits_equal_transformers_and_timm(case):
  model = _model(case)
  params = load_pretrained(FIXTURES / case["name"] / "model.safetensors", model)
  _check(model, _with_timm_head(params, case), case)
  memory = FIXTURES / case["name"] / "in_memory_names.safetensors"
  if memory.exists():   # transformers 5.x module names (what an ONNX graph carries)
    state = load_file(str(memory))
    assert any(".q_proj." in k for k in state)
    params2 = hf_vit.params_from_hf(state, model)
    _check(model, _with_timm_head(params2, case), case)


def test_hf_layout_equals_timm_layout():
  case = next(c for c in CASES if c["name"] == "hf_dinov2")
  model = _model(case)
  a = load_pretrained(FIXTURES / "hf_dinov2" / "model.safetensors", model)
  b = load_pretrained(FIXTURES / "dinov2.safetensors", model)
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for key in fa:
    if key[0] != "head":
      np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]),
                                    err_msg="/".join(key))


def _flat(tree: dict, prefix: tuple = ()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def test_hf_interpolation_mode_is_what_the_graph_computes():
  """The HF run-time resize is plain bicubic: timm's antialiased resize of the same
  file differs, and asking for it explicitly breaks the match."""
  case = next(c for c in CASES if c["name"] == "hf_dinov2_interpolate")
  model = _model(case)
  path = FIXTURES / case["name"] / "model.safetensors"
  _check(model, _with_timm_head(load_pretrained(path, model, interpolation="bicubic"),
                                case), case)
  with pytest.raises(AssertionError, match="relative difference"):
    _check(model, _with_timm_head(load_pretrained(path, model, interpolation="bicubic_aa"),
                                  case), case)


def test_timm_resample_is_antialiased_bicubic():
  case = next(c for c in CASES if c["name"] == "dinov2_resample")
  model = _model(case)
  path = FIXTURES / f"{case['name']}.safetensors"
  with pytest.raises(AssertionError, match="relative difference"):
    _check(model, _with_timm_head(load_pretrained(path, model, interpolation="bicubic"),
                                  case), case)


def test_wrong_architecture_lists_the_mismatch():
  case = next(c for c in CASES if c["name"] == "clip_b16")
  model = create_model("vit_small_patch14_dinov2", 5, image_size=48, patch_size=16,
                       **case["heat"])
  with pytest.raises(CheckpointError, match="missing.*LayerScale_0") as info:
    load_pretrained(FIXTURES / "clip_b16.safetensors", model)
  assert "norm_pre" in str(info.value) and "\n" not in str(info.value)
