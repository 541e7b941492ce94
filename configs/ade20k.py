# configs/ade20k.py of a checkout: the packaged heat_jax/configs/ade20k.py, re-exported, so that
# `--config=configs/ade20k.py[:args]` and `from configs import ade20k` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=ade20k).

from heat_jax.configs import ade20k as _packaged
from heat_jax.configs.ade20k import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
