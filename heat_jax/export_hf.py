"""A finished LoRA run on a ViT as a Hugging Face transformers model + peft adapter.

Usage:
  python -m heat_jax.export_hf --workdir=workdirs/dtd/lora --out=hf/dtd_lora

writes
  OUT/base      a transformers `ViTForImageClassification` (config.json,
                model.safetensors): the run's frozen backbone and its trained classifier,
                with the model's GELU form (`gelu_pytorch_tanh` for the tanh
                approximation of vit_jax, `gelu` for the exact one) and LayerNorm eps;
  OUT/adapter   a peft LoRA adapter (adapter_config.json with peft's own keys,
                adapter_model.safetensors) on the base's `query` / `value` Linears
                (`q_proj` / `v_proj` in transformers 5, which renamed ViT's modules:
                `--layout=v4|v5`, default the installed transformers', else v5).

so that, with torch, transformers and peft installed (heat_jax itself needs none of them):

  base = ViTForImageClassification.from_pretrained("OUT/base")
  model = PeftModel.from_pretrained(base, "OUT/adapter")

gives the run's logits for pixel values prepared as the run prepared them (NCHW; the
value range and size are in OUT/base/preprocessor.json). heat_jax's LoRA update of a
projection is `(alpha / rank) * x a b` with a [in, rank], b [rank, heads, head_dim];
peft's is `(lora_alpha / r) * B(A x)`, so lora_A = a.T and lora_B = b flattened over
(heads, head_dim) and transposed, with r = rank and lora_alpha = alpha. A Heart-LoRA
run (`heat.tune=lora`) exports too: its 0/1 head factors are folded into lora_B.
Other methods, Swin and `gap` / pre-logits ViTs are refused with one line.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import flags, logging

from heat_jax import absl_cli
from heat_jax.errors import ConfigError
from heat_jax.training import partition

FLAGS = flags.FLAGS
_BLOCK = "Transformer/encoderblock_{i}"
_ATTN = "MultiHeadDotProductAttention_0"
# Module names of one ViT layer in transformers 4 (`ViTLayer`) and 5 (which renamed
# them; it still reads 4's names in a model file, but peft targets the loaded modules).
LAYOUTS: dict[str, dict[str, str]] = {
    "v4": {"layer": "vit.encoder.layer.{i}", "query": "attention.attention.query",
           "key": "attention.attention.key", "value": "attention.attention.value",
           "out": "attention.output.dense", "fc1": "intermediate.dense",
           "fc2": "output.dense"},
    "v5": {"layer": "vit.layers.{i}", "query": "attention.q_proj", "key": "attention.k_proj",
           "value": "attention.v_proj", "out": "attention.o_proj", "fc1": "mlp.fc1",
           "fc2": "mlp.fc2"},
}


def default_layout() -> str:
  """The installed transformers' layout (v5 when transformers is not installed)."""
  try:
    from importlib.metadata import PackageNotFoundError, version
    major = int(version("transformers").split(".")[0])
  except (PackageNotFoundError, ValueError):
    return "v5"
  return "v4" if major < 5 else "v5"


def define_flags() -> None:
  if "out" in FLAGS:
    return
  flags.DEFINE_string("workdir", None, "Workdir of a finished LoRA run on a ViT.")
  flags.DEFINE_string("out", None, "Output folder: OUT/base and OUT/adapter are written.")
  flags.DEFINE_string("base", None, "Another copy of the run's base checkpoint "
                      "(default: the one the adapter names; its sha256 is checked).")
  flags.DEFINE_enum("layout", None, sorted(LAYOUTS), "Module names of transformers 4 or "
                    "5 (default: the installed transformers', else v5).")


def _lora_spec(model: Any):
  from heat_jax.methods.lora import LoraSpec
  exts = tuple(getattr(model, "extensions", ()))
  if len(exts) != 1 or not isinstance(exts[0], LoraSpec):
    kinds = ", ".join(getattr(e, "kind", type(e).__name__) for e in exts) or "none"
    raise ConfigError(f"export_hf exports LoRA runs (method lora, or heat with "
                      f"heat.tune=lora); this run's extensions: {kinds}. Use the run's "
                      "merged.npz (--config.train.export_merged=True) for a plain model")
  return exts[0]


def check_model(model: Any) -> None:
  """ConfigError unless `model` is a ViT that HF's ViTForImageClassification expresses."""
  if getattr(model, "family", "vit") != "vit":
    raise ConfigError(f"export_hf exports ViT runs; this run's model is a "
                      f"{getattr(model, 'family', '?')}")
  if getattr(model, "classifier", "token") != "token":
    raise ConfigError(f"export_hf: ViTForImageClassification classifies the class token; "
                      f"this run's model pools with {model.classifier!r}")
  if getattr(model, "representation_size", None):
    raise ConfigError("export_hf: ViTForImageClassification has no pre-logits layer; this "
                      "run's model has representation_size set")


def hf_config(model: Any, num_classes: int, class_names: Optional[list[str]]) -> dict:
  """config.json of the ViTForImageClassification equivalent to `model`."""
  names = class_names or [str(i) for i in range(num_classes)]
  return {
      "architectures": ["ViTForImageClassification"], "model_type": "vit",
      "hidden_size": int(model.hidden_size), "num_hidden_layers": int(model.num_layers),
      "num_attention_heads": int(model.num_heads), "intermediate_size": int(model.mlp_dim),
      "hidden_act": "gelu_pytorch_tanh" if model.approximate_gelu else "gelu",
      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
      "initializer_range": 0.02, "layer_norm_eps": float(model.layer_norm_eps),
      "image_size": int(model.image_size), "patch_size": int(model.patch_size),
      "num_channels": 3, "qkv_bias": True, "encoder_stride": int(model.patch_size),
      "id2label": {str(i): n for i, n in enumerate(names)},
      "label2id": {n: i for i, n in enumerate(names)},
  }


def base_state_dict(flat: dict[str, np.ndarray], num_layers: int,
                    layout: str = "v5") -> dict[str, np.ndarray]:
  """HF ViTForImageClassification tensors of flat plain canonical ViT params.

  Every canonical parameter is used exactly once; any other (an extension's, a
  module HF ViT does not have) is a ConfigError naming it.
  """
  used: set[str] = set()

  def get(key: str) -> np.ndarray:
    used.add(key)
    return np.asarray(flat[key], np.float32)

  def linear(key: str) -> np.ndarray:   # [in, ...out] -> torch [out, in]
    k = get(key)
    return k.reshape(k.shape[0], -1).T

  sd = {}
  kernel = get("embedding/kernel")           # [p, p, 3, D] -> [D, 3, p, p]
  sd["vit.embeddings.patch_embeddings.projection.weight"] = kernel.transpose(3, 2, 0, 1)
  sd["vit.embeddings.patch_embeddings.projection.bias"] = get("embedding/bias")
  sd["vit.embeddings.cls_token"] = get("cls")
  sd["vit.embeddings.position_embeddings"] = get("Transformer/posembed_input/pos_embedding")
  names = LAYOUTS[layout]
  for i in range(num_layers):
    b, hf = _BLOCK.format(i=i), names["layer"].format(i=i)
    for proj in ("query", "key", "value"):
      sd[f"{hf}.{names[proj]}.weight"] = linear(f"{b}/{_ATTN}/{proj}/kernel")
      sd[f"{hf}.{names[proj]}.bias"] = get(f"{b}/{_ATTN}/{proj}/bias").reshape(-1)
    out = get(f"{b}/{_ATTN}/out/kernel")     # [H, hd, D] -> [D, H hd]
    sd[f"{hf}.{names['out']}.weight"] = out.reshape(-1, out.shape[-1]).T
    sd[f"{hf}.{names['out']}.bias"] = get(f"{b}/{_ATTN}/out/bias")
    for ln, name in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_1", "layernorm_after")):
      sd[f"{hf}.{name}.weight"] = get(f"{b}/{ln}/scale")
      sd[f"{hf}.{name}.bias"] = get(f"{b}/{ln}/bias")
    for dense, name in (("Dense_0", names["fc1"]), ("Dense_1", names["fc2"])):
      sd[f"{hf}.{name}.weight"] = linear(f"{b}/MlpBlock_0/{dense}/kernel")
      sd[f"{hf}.{name}.bias"] = get(f"{b}/MlpBlock_0/{dense}/bias")
  sd["vit.layernorm.weight"] = get("Transformer/encoder_norm/scale")
  sd["vit.layernorm.bias"] = get("Transformer/encoder_norm/bias")
  sd["classifier.weight"] = get("head/kernel").T
  sd["classifier.bias"] = get("head/bias")
  unused = sorted(set(flat) - used)
  if unused:
    raise ConfigError(f"export_hf: the model has parameters ViTForImageClassification "
                      f"does not: {', '.join(unused[:4])}" + (" ..." if len(unused) > 4 else ""))
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def lora_state_dict(flat: dict[str, np.ndarray], spec: Any, num_layers: int,
                    layout: str = "v5") -> dict[str, np.ndarray]:
  """peft's adapter_model.safetensors tensors of the run's LoRA factors."""
  names = LAYOUTS[layout]
  sd = {}
  for i in range(num_layers):
    b = _BLOCK.format(i=i)
    for target in spec.targets:
      a = np.asarray(flat[f"{b}/{_ATTN}/lora_{target}/a"], np.float32)    # [D, r]
      bb = np.asarray(flat[f"{b}/{_ATTN}/lora_{target}/b"], np.float32)   # [r, H, hd]
      if spec.head_mask is not None:   # Heart-LoRA: a masked head gets no update
        keep = np.asarray(spec.head_mask[i][:bb.shape[1]], np.float32)
        bb = bb * keep[None, :, None]
      name = f"base_model.model.{names['layer'].format(i=i)}.{names[target]}"
      sd[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
      sd[f"{name}.lora_B.weight"] = np.ascontiguousarray(bb.reshape(bb.shape[0], -1).T)
  return sd


def adapter_config(spec: Any, base_dir: str, layout: str = "v5") -> dict:
  """adapter_config.json in peft's own keys (a LoraConfig)."""
  names = LAYOUTS[layout]
  return {
      "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_dir,
      "r": int(spec.rank), "lora_alpha": float(spec.alpha),
      "lora_dropout": float(spec.dropout),
      # the Linear's own name (query / value, or q_proj / v_proj in transformers 5)
      "target_modules": sorted(names[t].rsplit(".", 1)[1] for t in spec.targets),
      "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
      "init_lora_weights": True, "use_rslora": False, "use_dora": False,
      "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
      "rank_pattern": {}, "alpha_pattern": {},
  }


def export(workdir: str, out: str, *, base: Optional[str] = None,
           layout: Optional[str] = None) -> dict[str, str]:
  """Writes OUT/base and OUT/adapter for the LoRA run in `workdir`; returns the folders."""
  layout = layout or default_layout()
  from safetensors.numpy import save

  from heat_jax import artifacts
  from heat_jax.io_utils import as_path, atomic_open, write_json
  meta = artifacts.read_adapter_json(workdir)
  model, variables = artifacts.load_adapter(workdir, base=base)
  check_model(model)
  spec = _lora_spec(model)
  flat = partition.flatten(variables["params"])
  lora = {k: v for k, v in flat.items() if "/lora_" in k}
  plain = {k: v for k, v in flat.items() if "/lora_" not in k}
  num_classes = int(meta["model"]["num_classes"])
  base_sd = base_state_dict(plain, int(model.num_layers), layout)
  adapter_sd = lora_state_dict(lora, spec, int(model.num_layers), layout)
  base_dir, adapter_dir = os.path.join(out, "base"), os.path.join(out, "adapter")
  for folder in (base_dir, adapter_dir):
    as_path(folder).mkdir(parents=True, exist_ok=True)
  with atomic_open(os.path.join(base_dir, "model.safetensors"), "wb") as f:
    f.write(save(base_sd, metadata={"format": "pt"}))
  write_json(os.path.join(base_dir, "config.json"),
             hf_config(model, num_classes, meta.get("class_names")))
  write_json(os.path.join(base_dir, "preprocessor.json"),
             {"from": "heat_jax", "workdir": str(workdir), **meta.get("preprocess", {}),
              "layout": "NCHW float32 pixel_values"})
  with atomic_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "wb") as f:
    f.write(save(adapter_sd, metadata={"format": "pt"}))
  write_json(os.path.join(adapter_dir, "adapter_config.json"),
             adapter_config(spec, os.path.abspath(base_dir), layout))
  return {"base": base_dir, "adapter": adapter_dir}


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected argument {argv[1]!r}; use --workdir=W --out=DIR")
  if not FLAGS.workdir or not FLAGS.out:
    raise ConfigError("--workdir (a finished LoRA run) and --out (a new folder) are required")
  paths = export(FLAGS.workdir, FLAGS.out, base=FLAGS.base, layout=FLAGS.layout)
  logging.info(f"wrote the transformers model {paths['base']} and the peft adapter "
               f"{paths['adapter']}")
  print(f"{paths['base']}\n{paths['adapter']}")
  return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
  absl_cli.run(main, define_flags, argv)


if __name__ == "__main__":
  run()
