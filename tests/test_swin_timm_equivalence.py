"""Swin vs timm: logits from fixtures made by tools/make_swin_fixtures.py (no torch needed).

Tiny cases load the committed timm weights; the full-size cases regenerate their
weights from a seed (`heat_jax.testing.fake_swin`) and compare with committed timm
logits.
"""

import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from heat_jax.checkpoints import get_checkpoint, load_pretrained, resolve_checkpoint, swin_timm
from heat_jax.errors import CheckpointError
from heat_jax.models import create_model
from heat_jax.models.swin import Swin
from heat_jax.testing import fake_swin

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-4
REPORT = json.loads((FIXTURES / "swin_fixtures.json").read_text())
TINY = REPORT["tiny"]


def _inputs(n, size, seed):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_state():
  return swin_timm.load_state_dict(FIXTURES / "swin_tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_ref():
  return dict(np.load(FIXTURES / "swin_tiny.npz", allow_pickle=False))


def _tiny_model(**overrides):
  cfg = TINY["config"]
  assert (cfg["embed_dim"], tuple(cfg["depths"]), tuple(cfg["num_heads"])) == (32, (2, 2), (2, 4))
  return create_model("Swin-tiny", TINY["num_classes"], **overrides)


@functools.lru_cache(maxsize=None)
def _apply(model):  # one compilation per model configuration
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def _logits(model, params, x):
  return np.asarray(_apply(model)(params, x))


def _with_head(params, state):
  params = dict(params)
  params["head"] = {"kernel": state["head.fc.weight"].T, "bias": state["head.fc.bias"]}
  return params


def test_tiny_logits_through_load_pretrained(tiny_state, tiny_ref):
  model = _tiny_model()
  params = load_pretrained(FIXTURES / "swin_tiny.safetensors", model, keep_head=False)
  # keep_head=False (training runs): the head is re-initialised (zeros by default).
  assert not np.any(np.asarray(params["head"]["kernel"]))
  x = _inputs(TINY["num_inputs"], 32, TINY["input_seed"])
  out = _logits(model, _with_head(params, tiny_state), x)
  assert np.abs(out - tiny_ref["logits"]).max() <= TOL
  # By default a head of the model's class count is the file's: timm's logits as loaded.
  kept = load_pretrained(FIXTURES / "swin_tiny.safetensors", model)
  assert np.abs(_logits(model, kept, x) - tiny_ref["logits"]).max() <= TOL


def test_microsoft_layout_converts_identically(tiny_state, tmp_path):
  old = fake_swin.microsoft_layout(tiny_state)
  assert "layers.0.downsample.reduction.weight" in old and "head.weight" in old
  assert not any(k.startswith("layers.1.downsample") for k in old)
  model = _tiny_model()
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  template = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(shapes["params"], sep="/").items()}
  new_flat, new_facts = swin_timm.convert(tiny_state, template)
  old_flat, old_facts = swin_timm.convert(old, template)
  assert (new_facts["layout"], old_facts["layout"]) == ("timm", "microsoft")
  assert sorted(new_flat) == sorted(old_flat)
  for k in new_flat:
    np.testing.assert_array_equal(new_flat[k], old_flat[k])
  assert set(new_flat) == set(template)   # the classifier too (kept when it fits)
  # The same old-layout dict as a file goes through load_pretrained too.
  save_file({k: np.ascontiguousarray(v) for k, v in old.items()},
            str(tmp_path / "old_layout.safetensors"))
  params = load_pretrained(tmp_path / "old_layout.safetensors", model)
  flat = traverse_util.flatten_dict(params, sep="/")
  for k, v in new_flat.items():
    np.testing.assert_array_equal(flat[k], v)


def test_microsoft_pth_with_torch(tiny_state, tiny_ref, tmp_path):
  torch = pytest.importorskip("torch")
  old = fake_swin.microsoft_layout(tiny_state)
  torch.save({"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in old.items()}},
             tmp_path / "swin_tiny_22k.pth")
  model = _tiny_model()
  params = load_pretrained(tmp_path / "swin_tiny_22k.pth", model)
  x = _inputs(TINY["num_inputs"], 32, TINY["input_seed"])
  out = _logits(model, _with_head(params, tiny_state), x)
  assert np.abs(out - tiny_ref["logits"]).max() <= TOL


def test_pth_without_torch_and_bad_files(tmp_path, monkeypatch):
  pth = tmp_path / "x.pth"
  pth.write_bytes(b"not a pickle")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(CheckpointError, match="needs torch"):
    swin_timm.load_state_dict(pth)
  npz = tmp_path / "x.npz"
  np.savez(npz, a=np.zeros(2))
  with pytest.raises(CheckpointError, match="safetensors"):
    load_pretrained(npz, _tiny_model())
  broken = tmp_path / "broken.safetensors"
  broken.write_bytes(b"\x00" * 16)
  with pytest.raises(CheckpointError, match="cannot read"):
    swin_timm.load_state_dict(broken)
  other = tmp_path / "other.safetensors"
  save_file({"blocks.0.attn.qkv.weight": np.zeros((6, 2), np.float32)}, str(other))
  with pytest.raises(CheckpointError, match="not a Swin checkpoint"):
    load_pretrained(other, _tiny_model())


@pytest.mark.parametrize("method", ["bicubic", "geometric"])
def test_bias_table_resize_matches_reference(tiny_state, tiny_ref, method):
  # Tables of block 0 in each stage: 7x7 -> 15x15 (window 4 -> 8).
  for s, heads in enumerate((2, 4)):
    table = tiny_state[f"layers.{s}.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (49, heads)
    resized = swin_timm.resize_bias_table(table, 225, method)
    np.testing.assert_allclose(resized, tiny_ref[f"table_{method}_{s}"], atol=1e-5)
  target = TINY["resize_target"]
  model = _tiny_model(image_size=target["img_size"], window_size=target["window_size"])
  params = load_pretrained(FIXTURES / "swin_tiny.safetensors", model,
                           interpolation="zoom" if method == "bicubic" else method)
  x = _inputs(TINY["num_inputs"], target["img_size"], TINY["input_seed"])
  out = _logits(model, _with_head(params, tiny_state), x)
  ref = tiny_ref[f"logits_resize_{method}"]
  assert np.abs(out - ref).max() <= TOL
  other = tiny_ref["logits_resize_" + ("geometric" if method == "bicubic" else "bicubic")]
  assert np.abs(out - other).max() > 10 * TOL  # the two methods are distinguishable


def test_unknown_resize_method(tiny_state):
  with pytest.raises(CheckpointError, match="resize"):
    swin_timm.convert(tiny_state, {}, interpolation="nearest")


def test_padded_windows_and_odd_merge_against_timm_logits():
  padded = REPORT["padded"]
  cfg = fake_swin.PADDED
  assert padded["config"]["depths"] == list(cfg["depths"])
  state = fake_swin.swin_state_dict(**cfg, num_classes=padded["num_classes"],
                                    seed=padded["weights_seed"])
  model = Swin(num_classes=padded["num_classes"], patch_size=cfg["patch_size"],
               embed_dim=cfg["embed_dim"], depths=cfg["depths"], num_heads=cfg["num_heads"],
               window_size=cfg["window_size"], image_size=cfg["img_size"])
  x = _inputs(padded["num_inputs"], cfg["img_size"], padded["input_seed"])
  out = _logits(model, fake_swin.flax_params(state, model), x)
  assert np.abs(out - np.load(FIXTURES / "swin_padded.npz", allow_pickle=False)["logits"]).max() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Swin-T", "Swin-B"])
def test_full_size_against_timm_logits(name):
  full = REPORT["full"]
  cfg = fake_swin.FULL[name]
  assert full["models"][name]["config"]["depths"] == list(cfg["depths"])
  state = fake_swin.swin_state_dict(**cfg, num_classes=full["num_classes"],
                                    seed=full["weights_seed"])
  model = create_model(name, full["num_classes"])
  params = fake_swin.flax_params(state, model)
  del state
  x = _inputs(full["num_inputs"], cfg["img_size"], full["input_seed"])
  out = _logits(model, params, x)
  ref = np.load(FIXTURES / "swin_full.npz", allow_pickle=False)[name]
  assert np.abs(out - ref).max() <= TOL


def test_registered_checkpoints(monkeypatch):
  info = get_checkpoint("Swin-B")
  assert get_checkpoint("swin_base_patch4_window7_224.ms_in22k") == info  # timm's own tag
  assert info.family == "swin" and info.model == "Swin-B"
  assert info.url == ("https://huggingface.co/timm/swin_base_patch4_window7_224.ms_in22k"
                      "/resolve/main/model.safetensors")
  paths = set()
  for name in ("timm/swin_tiny_patch4_window7_224.ms_in1k",
               "timm/swin_small_patch4_window7_224.ms_in1k",
               "timm/swin_base_patch4_window7_224.ms_in1k",
               "timm/swin_base_patch4_window7_224.ms_in22k",
               "timm/swin_large_patch4_window7_224.ms_in22k",
               "microsoft/swin_base_patch4_window7_224_22k"):
    ck = get_checkpoint(name)
    assert ck is not None and ck.family == "swin"
    assert ck.path.startswith("swin/")
    paths.add(ck.path)
    paths.add(ck.filename)
  assert len(paths) == 12  # cache paths and file names are all distinct
  assert get_checkpoint("microsoft/swin_base_patch4_window7_224_22k").url.endswith(
      "/v1.0.0/swin_base_patch4_window7_224_22k.pth")
  monkeypatch.setenv("HEAT_JAX_SWIN_URL", "http://mirror.local/timm/")
  assert get_checkpoint("Swin-T").url == (
      "http://mirror.local/timm/swin_tiny_patch4_window7_224.ms_in1k/resolve/main/"
      "model.safetensors")


def test_registered_checkpoint_resolves_from_cache(tmp_path, monkeypatch, tiny_state):
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("HEAT_JAX_OFFLINE", "1")
  dest = tmp_path / "checkpoints" / get_checkpoint("Swin-T").path
  dest.parent.mkdir(parents=True)
  save_file(dict(tiny_state), str(dest))
  assert resolve_checkpoint("Swin-T") == dest
