# configs/folder.py of a checkout: the packaged heat_jax/configs/folder.py, re-exported, so that
# `--config=configs/folder.py[:args]` and `from configs import folder` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=folder).

from heat_jax.configs import folder as _packaged
from heat_jax.configs.folder import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
