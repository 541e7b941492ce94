"""`python run.py [flags]`: the `heat-jax` command from a checkout (help: `--help`).

The usage text, flags and exit codes are those of `heat_jax/cli.py` (`cli.USAGE`).
"""

from heat_jax import cli
from heat_jax.methods import available_methods

# --help prints this docstring: the method list is the registry's, never a copy.
__doc__ = __doc__.format(methods=" | ".join(available_methods()))

if __name__ == "__main__":
  cli.run()
