# configs/real.py of a checkout: the packaged heat_jax/configs/real.py, re-exported, so that
# `--config=configs/real.py[:args]` and `from configs import real` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=real).

from heat_jax.configs import real as _packaged
from heat_jax.configs.real import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
