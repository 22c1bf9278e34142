"""Test scaffolding shipped with the library: synthetic batches and a training driver over them
(`python -m cxrtrek_jax.testing.synthetic_training`), used by the sharding, resume and
fault-injection tests and by the benchmarks. Nothing here is needed to train on real data."""
