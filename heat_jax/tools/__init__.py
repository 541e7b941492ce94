"""Analysis tools run as modules, e.g. `python -m heat_jax.tools.intrinsic_dim --help`."""
