"""The benchmark scripts' core functions on tiny configurations: they run and report sane fields.

Not timed: figures are only checked for being present, positive and consistent (e.g. the JAX and
PyTorch first-step losses on the same weights agree; real shard sizes equal the abstract ones).
"""

import logging

import jax
import numpy as np
import pytest

from benchmarks import bench_input, bench_memory, bench_train, common, model_flops, tpu_compile_check
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.model import get_config, override
from data_pipeline.images import load_image_bytes

logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)
TINY = get_config("tiny")


def test_alternate_rotates_the_order_and_counts_warmup():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = common.alternate(cases, rounds=3, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(timings) == set("abc") and all(len(t.samples_s) == 3 for t in timings.values())
    timing = common.Timing("x", (3.0, 1.0, 2.0))
    assert timing.median_s == 2.0 and timing.spread == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rounds"):
        common.alternate(cases, rounds=0)


def test_machine_info_and_matmul_peak():
    info = common.machine_info()
    assert info["versions"]["jax"] == jax.__version__ and info["logical_cpus"] >= 1
    peak = common.measure_matmul_peak(64, rounds=1)
    assert set(peak.flops_per_s) == {"jax", "torch"} and peak.peak == max(peak.flops_per_s.values()) > 0


def test_model_flops_by_hand_for_the_text_head():
    flops = model_flops.forward_flops(TINY, batch=2, seq_len=10, images=3)
    t = TINY.text
    assert flops.lm_head == 2 * 2 * 10 * t.embed_dim * t.vocab_size
    answers_only = model_flops.forward_flops(TINY, batch=2, seq_len=10, images=3, head_tokens=7)
    assert answers_only.lm_head == 2 * 7 * t.embed_dim * t.vocab_size
    assert answers_only.total == flops.total - flops.lm_head + answers_only.lm_head
    assert flops.text_attention == 4 * 2 * 10**2 * t.num_heads * t.head_dim * t.num_layers
    assert model_flops.train_flops(TINY, batch=2, seq_len=10, images=3) == 3 * flops.total
    assert model_flops.hardware_train_flops(TINY, batch=2, seq_len=10, images=3) == 3 * flops.total  # no remat


@pytest.fixture(scope="module")
def train_results():
    bench = bench_train.TrainBenchConfig(preset="tiny", batch=2, seq_len=48, images=2, rounds=1, steps_per_round=1,
                                         warmup=1, torch_compile=False, peak_n=64)
    return bench_train.run_benchmark(bench, log=lambda message: None)


def test_bench_batch_matches_the_model_contract():
    batch = bench_train.bench_batch(TINY, batch=3, seq_len=40, images=2)
    n = TINY.tokens_per_image
    assert batch["input_tokens"].shape == (3, 40) and batch["images"].shape == (3, 2, 32, 32)
    assert (np.sum(batch["input_tokens"] == TINY.image_token_id, axis=1) == 2 * n).all()
    assert (batch["target_tokens"][:, :-1] == batch["input_tokens"][:, 1:]).all()
    assert batch["loss_mask"].sum() > 0 and set(np.unique(batch["stage_ids"][batch["loss_mask"] > 0])) <= set(range(1, 9))
    with pytest.raises(ValueError, match="text tokens"):
        bench_train.bench_batch(TINY, batch=1, seq_len=2 * n + 3, images=2)


def test_bench_train_reports_both_sides_on_the_same_weights(train_results):
    r = train_results
    assert set(r["sides"]) == {"jax", "torch_eager"}
    for side in r["sides"].values():
        assert side["steps_per_s"] > 0 and side["tokens_per_s"] == pytest.approx(side["steps_per_s"] * 2 * 48)
        assert side["mfu"] > 0
        assert side["mfu"] == pytest.approx(side["model_flops_per_s"] / r["matmul_peak"]["peak_flops_per_s"])
    losses = r["first_step_loss"]
    assert losses["jax"] == pytest.approx(losses["torch_eager"], abs=1e-4)
    assert 0.9 < r["xla_flops_per_step"] / r["model_flops_per_step"] < 1.5
    assert r["jax_vs_torch_eager"] > 0
    assert "JAX speed / torch eager speed" in bench_train.format_report(r)


def test_bench_memory_real_shards_equal_the_abstract_count():
    for n in (1, 4):
        real = bench_memory.real_bytes_per_device("tiny", n)
        abstract = bench_memory.abstract_bytes_per_device("tiny", n)
        assert real["total_bytes_max"] == abstract["total_bytes"]
        assert real["global_bytes"] == abstract["global_bytes"]
        assert real["total_bytes_max"] * n >= real["global_bytes"]
    eight = bench_memory.abstract_bytes_per_device("cxrtreknet-7b", 8)
    assert eight["global_bytes"] > 6e9 * 12  # 6.4 B fp32 parameters + 2 Adam moments
    assert eight["total_bytes"] * 8 / eight["global_bytes"] == pytest.approx(1.0, abs=0.01)


def test_dicom_twin_decodes_to_the_same_pixels():
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    decoded = load_image_bytes(bench_input.dicom_bytes(image), "twin.dcm")
    np.testing.assert_allclose(decoded, image, atol=1 / 4095)


def test_bench_input_measures_grain_and_the_dataloader(tmp_path):
    bench = bench_input.InputBenchConfig(num_studies=4, image_px=64, image_size=32, tokens_per_image=4,
                                         batch_size=2, vocab_size=600, workers=(0,), warmup=1, batches=1, rounds=1)
    r = bench_input.run_benchmark(bench, tmp_path, log=lambda message: None)
    assert set(r["cases"]) == {"grain/png/w0", "torch/png/w0", "grain/dicom/w0", "torch/dicom/w0"}
    for case in r["cases"].values():
        assert case["examples_per_s"] > 0 and case["cpu_s_per_example"] >= 0
    assert "| dicom | 0 |" in bench_input.format_report(r)


def test_tpu_compile_check_reports_memory_of_a_compiled_step():
    mesh = sh.make_mesh(sh.MeshConfig(fsdp=2), jax.devices()[:2])
    case = tpu_compile_check.TrainCase("cpu", global_batch=2, seq_len=48, images=2)
    one_layer = override(TINY, {"text.num_layers": 1, "vision.depth": 1})  # a quicker compile
    r = tpu_compile_check.compile_train_step(case, one_layer, mesh=mesh, hbm=2**30)
    m = r["memory"]
    assert r["chips"] == 2 and m["fits"] and m["argument_bytes"] > 0
    assert m["total_bytes"] == m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"] + m["code_bytes"]
    report = tpu_compile_check.MemoryReport(10, 5, 4, 3, 1, hbm_bytes=14, flops=None)
    assert report.total_bytes == 15 and not report.fits
    assert tpu_compile_check._parse_train_case("v5p:2x2x2:32:4096:4") == tpu_compile_check.TrainCase(
        "v5p:2x2x2", 32, 4096, 4)


def test_image_feature_statistics_and_view_probe():
    from benchmarks import image_features

    rng = np.random.default_rng(0)
    common_vector = np.zeros(8)
    common_vector[0] = 10.0
    tokens = common_vector + 0.5 * rng.standard_normal((4, 16, 8))
    stats = image_features.token_statistics(tokens)
    assert stats["common_mean_norm"] == pytest.approx(10.0, abs=0.3)
    assert stats["deviation_norm"] == pytest.approx(0.5 * np.sqrt(8), rel=0.2)
    y = rng.random(60) < 0.4
    x = rng.standard_normal((60, 5)) * 0.1
    x[:, 2] = np.where(y, 0.05, -0.05) + 0.001 * rng.standard_normal(60)  # small but clean: standardised away from scale
    train = np.arange(60) < 40
    assert image_features.ridge_probe_accuracy(x, y, train, ridge=1.0) == 1.0
    assert image_features.ridge_probe_accuracy(rng.standard_normal((60, 5)), y, train) < 0.9
    with pytest.raises(ValueError, match="both sides"):
        image_features.ridge_probe_accuracy(x, y, np.ones(60, bool))
