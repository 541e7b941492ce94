# configs/common.py of a checkout: the packaged heat_jax/configs/common.py, re-exported, so that
# `--config=configs/common.py[:args]` and `from configs import common` work as before. The
# configs live in the package so that the installed `heat-jax` finds them (--config=common).

from heat_jax.configs import common as _packaged
from heat_jax.configs.common import *  # noqa: F401,F403

__doc__ = _packaged.__doc__
