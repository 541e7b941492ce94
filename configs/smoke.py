# configs/smoke.py of a checkout: the packaged heat_jax/configs/smoke.py, re-exported, so that
# `--config=configs/smoke.py[:args]` and `from configs import smoke` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=smoke).

from heat_jax.configs import smoke as _packaged
from heat_jax.configs.smoke import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
