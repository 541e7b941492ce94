"""`python run.py [flags]`: the `heat-jax` command from a checkout (help: `--help`).

The usage text, flags and exit codes are those of `heat_jax/cli.py` (`cli.USAGE`).
"""

from heat_jax import cli

if __name__ == "__main__":
  cli.run()
