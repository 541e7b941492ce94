"""The intrinsic-dimension tool: d90, the subspace reparameterisation, the CLI end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heat_jax import checkpoints
from heat_jax.models import create_model
from heat_jax.tools import intrinsic_dim, subspace
from heat_jax.training import partition


def test_d90_is_the_smallest_d_reaching_90_percent():
  curve = [(10, 0.50), (20, 0.73), (40, 0.71), (80, 0.90)]
  assert intrinsic_dim.d90(0.8, curve) == 20                  # 0.73 >= 0.72
  assert intrinsic_dim.d90(0.8, list(reversed(curve))) == 20  # order of the grid is irrelevant
  assert intrinsic_dim.d90(0.8, [(5, 0.72), (9, 0.9)]) == 5   # reaching it exactly counts
  assert intrinsic_dim.d90(1.01, curve) is None               # no d reaches 90 % (0.909)
  assert intrinsic_dim.d90(0.8, []) is None


def test_hadamard_matches_scipy():
  from scipy.linalg import hadamard
  x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
  np.testing.assert_allclose(subspace.hadamard(x), x @ hadamard(16).T, rtol=1e-5, atol=1e-5)


def _fastfood_matrix(parts, num_params, dim):
  """The explicit P [num_params, dim] = S H G Pi H B (first dim columns, first rows)."""
  from scipy.linalg import hadamard
  length = len(parts["signs"])
  h = hadamard(length).astype(np.float64)
  perm = np.eye(length)[parts["perm"]]          # (perm @ v)[j] = v[perm[j]]
  full = parts["scale"] * h @ np.diag(parts["gauss"]) @ perm @ h @ np.diag(parts["signs"])
  return full[:num_params, :dim]


def test_fastfood_is_its_explicit_matrix_with_unit_scale_coordinates():
  n, d = 300, 20
  parts = subspace.fastfood_projection(n, d, seed=3)
  assert len(parts["signs"]) == 512
  p = _fastfood_matrix(parts, n, d)
  theta = np.random.default_rng(1).standard_normal(d).astype(np.float32)
  got = jax.jit(lambda t: subspace.fastfood(parts, t, n))(jnp.asarray(theta))
  np.testing.assert_allclose(got, p @ theta,
                             rtol=1e-4, atol=1e-5)
  # Entries of P have variance ~ 1/d, like a dense N(0, 1/d) projection.
  assert 0.8 < p.var() * d < 1.2


def test_subspace_model_adds_p_theta_to_one_part_only():
  model = create_model("ViT-micro", 3)
  params = checkpoints.init_params(model, rng=jax.random.key(0))
  rng = np.random.default_rng(2)   # a non-zero head, so the features reach the logits
  params["head"] = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                                params["head"])
  wrapped_model, wrapped, mask = subspace.subspace_setup(model, params, "mlp", 7, seed=1)
  n = subspace.part_size(params, "mlp")
  head = sum(np.size(v) for k, v in partition.flatten(params).items() if k.startswith("head"))
  assert partition.count(wrapped, mask) == 7 + head
  theta = rng.standard_normal(7).astype(np.float32)
  wrapped["theta_d"] = theta
  # Add P @ theta (fastfood: checked against its explicit matrix above) leaf by leaf, in
  # the tree order of the MlpBlock_0 leaves, by hand.
  offset = np.asarray(subspace.fastfood(wrapped["projection"], jnp.asarray(theta), n))
  flat = {k: np.array(v) for k, v in partition.flatten(params).items()}
  start = 0
  for k in flat:
    if "MlpBlock_0" in k:
      flat[k] = flat[k] + offset[start:start + flat[k].size].reshape(flat[k].shape)
      start += flat[k].size
  assert start == n
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(lambda p: model.apply({"params": p}, images))
  want = apply(partition.unflatten(flat))
  got = jax.jit(lambda p: wrapped_model.apply({"params": p}, images))(wrapped)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.abs(want - apply(params)).max() > 1e-3


@pytest.mark.parametrize("argv,match", [
    (["--dims=0,10"], "every d must be >= 1"),
    (["--dims=a"], "comma-separated integers"),
    (["--parts=attention,conv"], "unknown conv"),
    (["--task=nope"], "not a synthetic task"),
    ([], "--workdir is required"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, match):
  workdir = [] if not argv else [f"--workdir={tmp_path / 'w'}"]
  assert intrinsic_dim.run_cli(["prog", *workdir, *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and match in err and err.count("\n") == 1
  assert not (tmp_path / "w").exists()


def test_help(capsys):
  assert intrinsic_dim.run_cli(["prog", "--help"]) == 0
  out = capsys.readouterr().out
  assert "d90" in out and "--dims" in out


def test_tiny_grid_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  work = tmp_path / "w"
  code = intrinsic_dim.run_cli([
      "prog", f"--workdir={work}", "--model=ViT-micro", "--pretrain_steps=10",
      "--pretrain_images=640", "--dims=30,3", "--epochs=1", "--num_train=64",
      "--num_test=32", "--batch_size=16", "--lr=1e-2"])
  assert code == 0
  results = json.loads((work / "intrinsic_dim.json").read_text())
  table = (work / "intrinsic_dim.md").read_text()
  assert (work / "intrinsic_dim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(results["parts"]) == {"attention", "mlp"}
  for part, r in results["parts"].items():
    assert [c["d"] for c in r["curve"]] == [3, 30]
    reached = [c["d"] for c in r["curve"] if c["test_top1"] >= 0.9 * r["full_top1"] - 1e-9]
    assert r["d90"] == (min(reached) if reached else None)
    assert f"| {part} | {r['num_params']:,} | {100 * r['full_top1']:.1f} |" in table
  assert "| d=3 | d=30 | d90 |" in table
