"""The benchmark scripts' core functions on tiny configurations, each against an independent reference.

Not timed: the analytic FLOPs are checked against XLA's cost analysis of the compiled model, the
JAX and PyTorch first-step losses on the same weights against each other, real shard sizes against
the abstract count, compiled argument bytes against the state's own array sizes, and reported
timings against the wall clock around the run.
"""

import logging
import os
import time

import jax
import numpy as np
import pytest

from benchmarks import bench_input, bench_memory, bench_train, common, model_flops, tpu_compile_check
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.model import get_config, override
from data_pipeline.files.images import load_image_bytes

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
    assert set(peak.flops_per_s) == {"jax", "torch"} and min(peak.flops_per_s.values()) > 0


def _xla_forward_flops(cfg, batch=2, seq_len=48, images=2) -> float:
    """FLOPs of the model's compiled forward pass (logits) by XLA's cost analysis."""
    from flax import nnx

    from cxrtrek_jax.model import CXRTrekNet

    graphdef, state = nnx.split(nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0))))
    inputs = bench_train.bench_batch(cfg, batch=batch, seq_len=seq_len, images=images)

    def forward(state, tokens, images):
        return nnx.merge(graphdef, state)(tokens, images)[0]

    cost = jax.jit(forward).lower(state, inputs["input_tokens"], inputs["images"]).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def _analytic(cfg, batch=2, seq_len=48, images=2) -> float:
    return model_flops.forward_flops(cfg, batch=batch, seq_len=seq_len, images=batch * images).total


def test_analytic_flops_match_xla_cost_analysis_of_the_forward():
    """XLA counts every op, the analytic count matrix products only: XLA's figure is a few percent
    higher in total and per text layer; the LM head alone (a wider vocabulary) differs by one
    elementwise op per logit."""
    one_layer = override(TINY, {"text.num_layers": 1})
    wider = override(TINY, {"text.vocab_size": TINY.text.vocab_size + 512})
    xla = {name: _xla_forward_flops(cfg) for name, cfg in (("tiny", TINY), ("one", one_layer), ("wide", wider))}
    assert 1.0 <= xla["tiny"] / _analytic(TINY) < 1.06
    assert 1.0 <= (xla["tiny"] - xla["one"]) / (_analytic(TINY) - _analytic(one_layer)) < 1.06
    logits_added = 2 * 48 * 512
    assert xla["wide"] - xla["tiny"] == pytest.approx(_analytic(wider) - _analytic(TINY) + logits_added, rel=1e-3)
    # A training step is forward + backward (2 x forward), without remat nothing recomputed.
    train = model_flops.train_flops(TINY, batch=2, seq_len=48, images=4)
    assert train == pytest.approx(3 * _analytic(TINY))
    assert model_flops.hardware_train_flops(TINY, batch=2, seq_len=48, images=4) == train


@pytest.fixture(scope="module")
def train_results():
    """(results, wall-clock seconds of the whole run)."""
    bench = bench_train.TrainBenchConfig(preset="tiny", batch=2, seq_len=48, images=2, rounds=2, steps_per_round=1,
                                         warmup=1, torch_compile=False, peak_n=64)
    start = time.perf_counter()
    results = bench_train.run_benchmark(bench, log=lambda message: None)
    return results, time.perf_counter() - start


def test_bench_batch_matches_the_model_contract():
    batch = bench_train.bench_batch(TINY, batch=3, seq_len=40, images=2)
    n = TINY.tokens_per_image
    assert batch["input_tokens"].shape == (3, 40) and batch["images"].shape == (3, 2, 32, 32)
    assert (np.sum(batch["input_tokens"] == TINY.image_token_id, axis=1) == 2 * n).all()
    assert (batch["target_tokens"][:, :-1] == batch["input_tokens"][:, 1:]).all()
    assert batch["loss_mask"].sum() > 0 and set(np.unique(batch["stage_ids"][batch["loss_mask"] > 0])) <= set(range(1, 9))
    with pytest.raises(ValueError, match="text tokens"):
        bench_train.bench_batch(TINY, batch=1, seq_len=2 * n + 3, images=2)


@pytest.mark.slow  # runs both sides' processes (~50 s); make bench-train runs the real thing
def test_bench_train_reports_both_sides_on_the_same_weights(train_results):
    r, wall_s = train_results
    assert set(r["sides"]) == {"jax", "torch_eager"}
    timed = 0.0
    for side in r["sides"].values():
        assert len(side["samples_s"]) == 2 and min(side["samples_s"]) > 0 and 0 < side["mfu"]
        timed += sum(side["samples_s"])
    # Every timed round ran inside the call (first steps and compilation came on top).
    assert timed + sum(r["first_step_s"].values()) < wall_s
    # Each side ran in a process of its own, none in this one; the losses agree across processes.
    pids = r["side_pids"]
    assert len(set(pids.values())) == len(pids) == 2 and os.getpid() not in pids.values()
    losses = r["first_step_loss"]
    assert losses["jax"] == pytest.approx(losses["torch_eager"], abs=1e-4)
    assert 0.9 < r["xla_flops_per_step"] / r["model_flops_per_step"] < 1.5
    assert r["jax_vs_torch_eager"] > 0
    assert "JAX speed / torch eager speed" in bench_train.format_report(r)


def test_a_failing_side_process_raises_its_error_here():
    bench = bench_train.TrainBenchConfig(preset="tiny", batch=1, seq_len=48, images=2)
    with pytest.raises(RuntimeError, match=r"(?s)the no_such_side side process failed.*unknown side kind"):
        bench_train.SideProcess("no_such_side", bench)


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
    assert r["chips"] == 2 and m["fits"]
    # The arguments are the train state (fp32 parameters and two Adam moments), sharded over the two
    # chips, and the batch: between half a full copy of the state and a full one, per chip.
    from flax import nnx

    from cxrtrek_jax.model import CXRTrekNet

    params = nnx.state(nnx.eval_shape(lambda: CXRTrekNet(one_layer, rngs=nnx.Rngs(0))), nnx.Param)
    state_bytes = 3 * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    assert r["params"] * 4 * 3 == state_bytes
    assert state_bytes / 2 <= m["argument_bytes"] < state_bytes
    assert tpu_compile_check._parse_train_case("v5p:2x2x2:32:4096:4") == tpu_compile_check.TrainCase(
        "v5p:2x2x2", 32, 4096, 4)


def test_tpu_compile_check_compiles_the_sharded_chain_answer_step():
    """The staged decoder's answer step as `eval --set mesh.*` runs it: on 4 chips (fsdp 2 x tensor 2)
    each chip holds well under the arguments one chip holds alone (weights and chain state sharded)."""
    case = tpu_compile_check.DecodeCase("cpu", batch=4, prompt_len=16, cache_len=64, images=2)
    one_layer = override(TINY, {"text.num_layers": 1, "vision.depth": 1, "remat": True})  # as the presets

    def argument_bytes(mesh):
        compiled = tpu_compile_check._lower_chain_answer(case, one_layer, mesh).compile()
        return tpu_compile_check._report(compiled, 2**30).argument_bytes

    alone = argument_bytes(sh.make_mesh(sh.MeshConfig(fsdp=1), jax.devices()[:1]))
    four = argument_bytes(sh.make_mesh(sh.MeshConfig(fsdp=2, tensor=2), jax.devices()[:4]))
    assert alone / 4 <= four < alone / 2
    assert tpu_compile_check.DECODE_PROGRAMS[-1] == "chain_answer"


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


@pytest.mark.slow
def test_decode_step_profile_and_streamed_products():
    """The decode-step profile finds the step's matrix products, and the three product
    implementations it times compute the same sums as numpy (checked inside matmul_stream)."""
    from benchmarks.profile_decode_step import DecodeStep, matmul_stream
    from benchmarks.profile_train_step import profile_jax

    from flax import nnx

    from cxrtrek_jax.model import CXRTrekNet, get_config

    model = CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0))
    profile = profile_jax(DecodeStep(model, batch=2, window=32, compiler_options={
        "xla_cpu_enable_xprof_traceme": True}), steps=2)
    assert profile["groups_s_per_step"].get("matmul", 0) > 0, profile["groups_s_per_step"]
    stream = matmul_stream(4, matrices=2, k=16, n=32, rounds=1)
    assert set(stream["methods"]) == {"jax (YNNPACK products)", "jax (Eigen products)", "torch F.linear"}
    assert all(r["ms"] > 0 for r in stream["methods"].values())
