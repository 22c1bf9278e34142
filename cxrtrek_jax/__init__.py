"""CXRTrek-JAX: staged chest X-ray vision-language reasoning in JAX/Flax."""

__version__ = "0.1.0"
