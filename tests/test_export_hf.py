"""`python -m heat_jax.export_hf`: a LoRA run as transformers ViT + peft adapter.

The consumer is the real one: transformers' `ViTForImageClassification.from_pretrained`
and peft's `PeftModel.from_pretrained` (optional: skipped with a reason without torch,
transformers and peft). Their logits must equal heat_jax's (`load_adapter`) to 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# lr 0.03: a LoRA delta the logits show (checked below against the base alone).
LORA = ("--config=configs/smoke.py:method=lora", "--config.train.epochs=1",
        "--config.optim.lr=0.03")
HEART = ("--config=configs/smoke.py:method=heat", "--config.heat.tune=lora",
         "--config.heat.budget=2", "--config.train.epochs=1", "--config.optim.lr=0.03")


@pytest.fixture
def hf_stack():
  """(torch, transformers, peft), or a skip naming what is missing. torchvision's
  compiled ops may not load next to a CPU torch wheel (see conftest `torch_and_timm`);
  ViT never uses them, but transformers imports their meta registrations eagerly."""
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  torch = pytest.importorskip("torch", reason="needs torch, transformers and peft "
                              "(pip install torch transformers peft)")
  transformers = pytest.importorskip("transformers", reason="needs transformers and peft")
  peft = pytest.importorskip("peft", reason="needs peft (pip install peft)")
  return torch, transformers, peft


def _export(work: Path, out: Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "heat_jax.export_hf", f"--workdir={work}",
                         f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.parametrize("args", [LORA, HEART], ids=["lora", "heart_lora"])
def test_peft_model_gives_heat_jax_logits(cli_run, hf_stack, tmp_path, args):
  torch, transformers, peft = hf_stack
  from heat_jax import artifacts
  work, _ = cli_run(*args)
  proc = _export(work, tmp_path / "hf")
  assert proc.returncode == 0, proc.stderr[-3000:]
  model, variables = artifacts.load_adapter(str(work))
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, images, train=False))

  config = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
  lora = peft.LoraConfig.from_pretrained(str(tmp_path / "hf" / "adapter"))
  assert (lora.r, lora.lora_alpha, sorted(lora.target_modules)) == (
      8, 8.0, sorted(config["target_modules"])) and config["peft_type"] == "LORA"
  assert config["target_modules"] in (["query", "value"], ["q_proj", "v_proj"])

  base = transformers.ViTForImageClassification.from_pretrained(
      str(tmp_path / "hf" / "base")).eval()
  net = peft.PeftModel.from_pretrained(base, str(tmp_path / "hf" / "adapter")).eval()
  pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    got = net(pixel_values=pixels).logits.numpy()
    with net.disable_adapter():
      plain = net(pixel_values=pixels).logits.numpy()
  diff = float(np.abs(got - want).max())
  print(f"{args[0]}: max |peft - heat_jax| logits = {diff:.3g} (logits up to "
        f"{np.abs(want).max():.3g}; without the adapter {np.abs(plain - want).max():.3g})")
  assert diff <= TOL
  assert np.abs(plain - want).max() > 10 * TOL   # the adapter carries the LoRA update


def test_base_folder_loads_back_into_heat_jax_with_the_runs_head(cli_run, tmp_path):
  """D/base/model.safetensors (a ViTForImageClassification) read by heat_jax's loader is
  the run's frozen backbone and its trained classifier (`classifier.*` kept as the head
  when it fits), not a fresh head; the LoRA update is only in D/adapter."""
  from heat_jax import artifacts, checkpoints, model_spec
  from heat_jax.training import partition
  work, _ = cli_run(*LORA)
  proc = _export(work, tmp_path / "hf")
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, variables = artifacts.load_adapter(str(work))
  meta = artifacts.read_adapter_json(str(work))
  plain = model_spec.model_from_spec({**meta["model"], "extensions": []})
  loaded = partition.flatten(checkpoints.load_pretrained(
      str(tmp_path / "hf" / "base" / "model.safetensors"), plain))
  run = partition.flatten(variables["params"])
  assert np.abs(run["head/kernel"]).max() > 1e-3   # trained, unlike a fresh (zero) head
  for key, value in loaded.items():
    np.testing.assert_allclose(value, run[key], atol=1e-7, err_msg=key)
  assert len(run) > len(loaded) and any("lora" in k for k in set(run) - set(loaded))


def test_refuses_a_run_without_lora(cli_run, tmp_path):
  work, _ = cli_run("--config=configs/smoke.py:method=linear", "--config.train.max_steps=1")
  proc = _export(work, tmp_path / "hf")
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "exports LoRA runs" in lines[0], proc.stderr
  assert not (tmp_path / "hf").exists()
