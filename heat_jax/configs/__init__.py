"""The packaged configs, `--config=<name>[:arg]`: demo, folder, smoke, vtab.

`common.py` holds `base_config()` (every field and its default) and the arg parser; a
checkout's `configs/*.py` re-export these modules (`heat_jax.config_names`).
"""
