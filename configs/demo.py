# configs/demo.py of a checkout: the packaged heat_jax/configs/demo.py, re-exported, so that
# `--config=configs/demo.py[:args]` and `from configs import demo` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=demo).

from heat_jax.configs import demo as _packaged
from heat_jax.configs.demo import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
