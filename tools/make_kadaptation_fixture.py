"""Writes tests/fixtures/kadaptation_pevit.npz: the released KAdaptation attention's output.

The released code is eric-ai-lab/PEViT, file vision_benchmark/evaluation/model.py
(class MultiheadAttention), at commit PEVIT_COMMIT. It is not part of this repository;
get it with

  git clone https://github.com/eric-ai-lab/PEViT /tmp/PEViT
  git -C /tmp/PEViT checkout be6fb43ff54adeeffe720c663dd238976070558e

and run (torch needed, nothing else: the module imports only torch and numpy)

  python tools/make_kadaptation_fixture.py --pevit=/tmp/PEViT

`--pevit` may also be a bare git mirror: the file is then read with `git show`.
The attention runs with 1 head and batch 1, where the released token/head reshape of
the delta has no effect, in eval mode (no weight dropout), every weight random and
non-zero (the release zero-fills its fast weights; they are set here after init).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

PEVIT_COMMIT = "be6fb43ff54adeeffe720c663dd238976070558e"
PEVIT_PATH = "vision_benchmark/evaluation/model.py"
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "fixtures", "kadaptation_pevit.npz")
WIDTH, TOKENS = 64, 5          # the release hard-codes phm_dim = 32: m = 2


def load_release(root: str):
  """The released model.py as a module, from a work tree or a git mirror at the commit."""
  tmp = tempfile.mkdtemp()
  path = os.path.join(tmp, "pevit_model.py")
  src = subprocess.run(["git", "-C", root, "show", f"{PEVIT_COMMIT}:{PEVIT_PATH}"],
                       check=True, capture_output=True).stdout
  with open(path, "wb") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location("pevit_model", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pevit", required=True, help="PEViT checkout or git mirror")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  import torch
  release = load_release(args.pevit)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  attn = release.MultiheadAttention(WIDTH, 1)
  n, m = attn.phm_dim, WIDTH // attn.phm_dim
  arrays = {
      "in_proj_weight": 0.2 * rng.standard_normal((3 * WIDTH, WIDTH)),
      "in_proj_bias": 0.1 * rng.standard_normal(3 * WIDTH),
      "out_proj_weight": 0.2 * rng.standard_normal((WIDTH, WIDTH)),
      "out_proj_bias": 0.1 * rng.standard_normal(WIDTH),
      "u": 0.3 * rng.standard_normal((n, m, 1)),           # q_proj_adapter1_left
      "v": 0.3 * rng.standard_normal((n, 1, m)),           # q_proj_adapter1_right
      "v_fast_u": 0.3 * rng.standard_normal((n, m, 1)),    # v_proj_adapter1_*: unused
      "v_fast_v": 0.3 * rng.standard_normal((n, 1, m)),    #   by the release's v update
      "rule1_left": 0.1 * rng.standard_normal((n, n, 1)),
      "rule1_right": 0.1 * rng.standard_normal((n, 1, n)),
      "rule2_left": 0.1 * rng.standard_normal((n, n, 1)),
      "rule2_right": 0.1 * rng.standard_normal((n, 1, n)),
      "b": 0.1 * rng.standard_normal(WIDTH),
      "x": rng.standard_normal((TOKENS, WIDTH)),
  }
  arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
  t = {k: torch.from_numpy(v) for k, v in arrays.items()}
  with torch.no_grad():
    attn.in_proj_weight.copy_(t["in_proj_weight"])
    attn.in_proj_bias.copy_(t["in_proj_bias"])
    attn.out_proj.weight.copy_(t["out_proj_weight"])
    attn.out_proj.bias.copy_(t["out_proj_bias"])
    attn.q_proj_adapter1_left.copy_(t["u"])
    attn.q_proj_adapter1_right.copy_(t["v"])
    attn.v_proj_adapter1_left.copy_(t["v_fast_u"])
    attn.v_proj_adapter1_right.copy_(t["v_fast_v"])
    attn.b.copy_(t["b"])
    attn.set_phm_rule(phm_rule1_left=t["rule1_left"], phm_rule1_right=t["rule1_right"],
                      phm_rule2_left=t["rule2_left"], phm_rule2_right=t["rule2_right"])
    attn.eval()
    x = t["x"][:, None]                                     # (tokens, batch 1, width)
    out, _ = attn(x, x, x, need_weights=False)
  arrays["output"] = out[:, 0].numpy().astype(np.float32)
  arrays["scale"] = np.float32(attn.lora_attn_alpha / attn.lora_attn_dim * 5)
  arrays["source"] = np.array(f"eric-ai-lab/PEViT@{PEVIT_COMMIT}:{PEVIT_PATH}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez(args.out, **arrays)
  print(f"wrote {args.out}: output {arrays['output'].shape}, scale {arrays['scale']}")


if __name__ == "__main__":
  sys.exit(main())
