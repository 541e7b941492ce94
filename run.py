"""heat_jax command line.

  python run.py                                   # the built-in offline demo study
  python run.py --config=configs/vtab.py:dtd --workdir=/tmp/dtd
  python run.py --config=configs/vtab.py:dtd,method=lora --config.train.epochs=10

Bad input (config, data, checkpoints) prints one line and exits with code 2.
"""

from __future__ import annotations

import os
import sys

from heat_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(sys.argv, default_config=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py")))
