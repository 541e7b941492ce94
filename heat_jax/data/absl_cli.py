"""Moved to `heat_jax.absl_cli` (run.py uses it too); kept so older imports still work."""

from heat_jax.absl_cli import FLAGS, fail, parse_flags, run  # noqa: F401
