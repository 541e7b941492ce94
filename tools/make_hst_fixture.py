"""Writes tests/fixtures/hst_release.npz: the released HST `ViT_HSN` forward, small size.

The released code is AFeng-x/HST (models/vit_hsn.py, models/vit_custom_modules.py) at
commit HST_COMMIT. It is not part of this repository; get it with

  git clone https://github.com/AFeng-x/HST /tmp/HST
  git -C /tmp/HST checkout ee89571c646e6d60cdddea9ff7b4ab521558a49d

and run (torch + timm needed) `python tools/make_hst_fixture.py --hst=/tmp/HST`.
`--hst` may be a clone or a bare git mirror: the two files are read with `git show` at
the commit into a temporary package. Imports the release needs only for other work
(thop, ipdb, timm's removed `timm.models.layers.helpers`) are stubbed.

The model: ViT (width 32, 4 blocks, 2 heads, patch 16, MLP 4x, exact GELU) at 64 px with
4 side stages of widths 8/12/16/24, heads 2/2/4/4, one side block per ViT block; every
parameter and BatchNorm statistic is perturbed; drop path 0. Stored: the state dict
(torch names), the images (NHWC), the eval-mode logits, and the train-mode logits with
the BatchNorm running statistics after that one train-mode forward.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

HST_COMMIT = "ee89571c646e6d60cdddea9ff7b4ab521558a49d"
FILES = ("models/vit_hsn.py", "models/vit_custom_modules.py")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "fixtures", "hst_release.npz")
CONFIG = dict(img_size=64, patch_size=16, num_classes=5, embed_dim=32, depth=4,
              num_heads=2, mlp_ratio=4.0, m_embed_dims=[8, 12, 16, 24],
              m_c_num_heads=[2, 2, 4, 4], m_depths=[1, 1, 1, 1], block_indices=[0, 1, 2, 3],
              num_stages=4, drop_path_rate=0.0)
BATCH = 4


def load_release(root: str):
  """models.vit_hsn of the release, as a package in a temporary directory."""
  tmp = tempfile.mkdtemp()
  pkg = os.path.join(tmp, "hst_release", "models")
  os.makedirs(pkg)
  for init in (os.path.join(tmp, "hst_release"), pkg):
    open(os.path.join(init, "__init__.py"), "w").close()
  for path in FILES:
    src = subprocess.run(["git", "-C", root, "show", f"{HST_COMMIT}:{path}"], check=True,
                         capture_output=True).stdout
    with open(os.path.join(tmp, "hst_release", path), "wb") as f:
      f.write(src)
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  for name in ("thop", "ipdb"):                  # profiling / debugging only
    stub = types.ModuleType(name)
    stub.profile = None
    sys.modules.setdefault(name, stub)
  import timm.layers
  helpers = types.ModuleType("timm.models.layers.helpers")   # moved in timm >= 0.9
  helpers.to_2tuple = timm.layers.to_2tuple
  sys.modules.setdefault("timm.models.layers.helpers", helpers)
  sys.path.insert(0, tmp)
  from hst_release.models import vit_hsn
  return vit_hsn


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hst", required=True, help="HST clone or git mirror")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  import torch
  vit_hsn = load_release(args.hst)
  torch.manual_seed(0)
  model = vit_hsn.ViT_HSN(**CONFIG)
  rng = np.random.default_rng(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(torch.from_numpy(0.1 * rng.standard_normal(tuple(p.shape)).astype(np.float32)))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.from_numpy(0.2 * rng.standard_normal(tuple(b.shape)).astype(np.float32)))
      elif name.endswith("running_var"):
        b.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(b.shape)).astype(np.float32)))
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
  images = rng.standard_normal((BATCH, 64, 64, 3)).astype(np.float32)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    model.eval()
    eval_logits = model(x).numpy()
    model.train()
    train_logits = model(x).numpy()
  after = {f"after/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()
           if k.endswith(("running_mean", "running_var"))}
  out = {f"state/{k}": v for k, v in state.items()}
  out.update(after, images=images, eval_logits=eval_logits, train_logits=train_logits,
             source=np.array(f"AFeng-x/HST@{HST_COMMIT}:{FILES[0]}"))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez(args.out, **out)
  print(f"wrote {args.out}: {len(state)} tensors, logits {eval_logits.shape}")


if __name__ == "__main__":
  sys.exit(main())
