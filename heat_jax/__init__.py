"""heat_jax: head-level parameter-efficient adaptation of vision transformers in JAX/Flax.

`heat_jax.load_adapter(workdir, base=...)` rebuilds a fine-tuned model from a run's
adapter files (see `heat_jax.artifacts`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  # Lazy: `import heat_jax.data.prepare` and the CLIs' --help must not import JAX.
  if name == "load_adapter":
    from heat_jax.artifacts import load_adapter
    return load_adapter
  raise AttributeError(f"module 'heat_jax' has no attribute {name!r}")
