"""heat_jax: head-level parameter-efficient adaptation of vision transformers in JAX/Flax."""

__version__ = "0.1.0"
