"""dicp-jax: in-context RL (AD) and in-context model-based planning (DICP) in JAX."""

__version__ = "0.1.0"
