"""The packaged configs, `--config=<name>[:arg]`: ade20k, demo, folder, real, smoke, smoke_seg, vtab.

`common.py` holds `base_config()` (every field and its default) and the arg parser; a
checkout's `configs/*.py` re-export these modules (`heat_jax.config_names`).
"""
