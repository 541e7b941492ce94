# configs/vtab.py of a checkout: the packaged heat_jax/configs/vtab.py, re-exported, so that
# `--config=configs/vtab.py[:args]` and `from configs import vtab` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=vtab).

from heat_jax.configs import vtab as _packaged
from heat_jax.configs.vtab import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
