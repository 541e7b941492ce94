"""Writes heat_jax/assets/demo_backbone.{npz,json}: the demo study's pretrained ViT-demo.

The backbone is made by the study's own pretraining (`heat_jax.study.pretrained_backbone`
with the default `configs/demo.py` settings, in a fresh temporary cache, ignoring any
packaged copy), so `python run.py` needs no pretraining. The JSON records the
pretraining key (a hash of the model and `config.pretrain`: the study uses the asset
only for that key), the file's sha256, the held-out pretraining accuracy and the
pretraining's trace (`study.pretraining_trace`: the losses of its first 50 steps and
the parameter norms after them). 1500 steps amplify rounding, so the command
reproduces the file bit for bit only on the machine that made it (elsewhere the
weights end up ~0.4 apart, the accuracy close); tests/test_demo.py reruns the trace on
any machine and evaluates the file against its recorded accuracy, so a code change
that alters the pretraining fails there until this tool is rerun.

Usage: python tools/make_demo_backbone.py [OUT_DIR]     (default heat_jax/assets)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make(out_dir: Path) -> Path:
  """Pretrains in a fresh cache and writes the asset pair into `out_dir`."""
  from heat_jax import study
  from heat_jax.io_utils import sha256_file, write_json
  from heat_jax.configs import demo
  config = demo.get_config()
  with tempfile.TemporaryDirectory() as cache:
    old = os.environ.get("HEAT_JAX_CACHE")
    os.environ["HEAT_JAX_CACHE"] = cache
    try:
      path = Path(study.pretrained_backbone(config, packaged=False))
      info = json.loads(path.with_suffix(".json").read_text())
      out_dir.mkdir(parents=True, exist_ok=True)
      target = out_dir / f"{study.BACKBONE_ASSET}.npz"
      shutil.copyfile(path, target)
    finally:
      if old is None:
        os.environ.pop("HEAT_JAX_CACHE", None)
      else:
        os.environ["HEAT_JAX_CACHE"] = old
  with tempfile.TemporaryDirectory() as trace_dir:
    trace = study.pretraining_trace(config, trace_dir)
  write_json(out_dir / f"{study.BACKBONE_ASSET}.json",
             {"key": study.backbone_key(config), "sha256": sha256_file(target),
              "test_top1": info["test_top1"], "steps": info["steps"],
              "pretrain": info["pretrain"], "model": config.base.model.name,
              "made_by": "tools/make_demo_backbone.py", "trace": trace})
  return target


if __name__ == "__main__":
  from heat_jax import logs
  logs.setup()
  out = make(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "heat_jax" / "assets")
  print(out)
