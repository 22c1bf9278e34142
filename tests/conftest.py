"""Test-wide set-up: 8 simulated CPU devices, fp32, offline.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402  (after the environment above, as jax must not be imported before it)


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for the whole session of one test process (each xdist worker
    has its own directory): the many runs, evaluations and CLI calls that build the same functions
    compile them once and load them after. Only the speed changes; the settings are restored at the
    end. (Modules that lean on it most also name it in `pytestmark`.)"""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# The longest test modules (measured with `--durations`, 2 cores), run first. `make test` hands whole
# files to its two workers (`--dist loadfile`) in collection order; a long file collected last keeps
# one worker busy while the other has nothing left, so the longest go first.
LONGEST_MODULES = (
    "test_trainer.py", "test_construct_end_to_end.py", "test_released_data.py", "test_model_eval.py",
    "test_infer_cli.py", "test_text_only.py", "test_hf_published.py", "test_external_eval.py",
)


def pytest_collection_modifyitems(config, items):
    """Collection order: `LONGEST_MODULES` first (in that order), then the rest as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
