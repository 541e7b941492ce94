"""A checkout's configs/: thin re-exports of the packaged heat_jax/configs/ modules."""
