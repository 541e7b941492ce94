# configs/smoke_seg.py of a checkout: the packaged heat_jax/configs/smoke_seg.py, re-exported, so that
# `--config=configs/smoke_seg.py[:args]` and `from configs import smoke_seg` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=smoke_seg).

from heat_jax.configs import smoke_seg as _packaged
from heat_jax.configs.smoke_seg import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
