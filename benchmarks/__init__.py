"""Benchmarks and pod-scale evidence for CXRTrek-JAX (see BENCHMARKS.md for figures and commands)."""
