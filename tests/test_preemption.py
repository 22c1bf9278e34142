"""Pre-emption (SIGTERM -> checkpoint at the current step, exit 0) and NaN/Inf stops."""

import json
import os
import pathlib
import signal
import threading
import time

import grain
import jax
import numpy as np
import pytest

from cxrtrek_jax.train import checkpointing as ck
from cxrtrek_jax.train import optimizer as opt
from cxrtrek_jax.train import preemption
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.testing import synthetic_batches as sb
from cxrtrek_jax.testing import synthetic_training
from cxrtrek_jax.train import loop as train_loop
from cxrtrek_jax.train import step as ts
from cxrtrek_jax.model import CXRTrekNet, get_config, override, to_dict


def _write_random_params(directory, config):
    """A params-only checkpoint (as `import-hf` writes) with random weights: starting runs from
    it skips compiling the model's initialiser."""
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(config, rngs=rngs))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: 0.05 * rng.standard_normal(x.shape).astype(np.float32),
                          split.abstract_params)
    ck.save_params_only(directory, params, model_config=to_dict(config),
                        logical_names=split.logical_names)


def test_watcher_turns_sigterm_into_a_stop_request_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatcher() as watcher:
        assert not watcher.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not watcher.requested and time.time() < deadline:
            time.sleep(0.01)
        assert watcher.should_stop(1)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_check_finite_names_the_step():
    preemption.check_finite(3, {"finite": np.bool_(True), "loss": 1.0, "grad_norm": 2.0})
    with pytest.raises(preemption.NonFiniteError, match=r"step 7: loss=nan, grad_norm=inf"):
        preemption.check_finite(7, {"finite": np.bool_(False), "loss": np.nan, "grad_norm": np.inf})


def test_sigterm_during_training_saves_the_current_step_and_exits_zero(tmp_path, capsys):
    """The real driver, in-process: a thread sends SIGTERM once step 2 is logged."""
    workdir, metrics = tmp_path / "run", tmp_path / "metrics.jsonl"
    _write_random_params(tmp_path / "imported", get_config("tiny"))

    def send_sigterm_after_step_2():
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=send_sigterm_after_step_2, daemon=True)
    killer.start()
    code = synthetic_training.main(["--workdir", str(workdir), "--steps", "50", "--save-every", "100",
                            "--metrics-file", str(metrics), "--sleep-per-step", "0.5",
                            "--init-params-from", str(tmp_path / "imported")])
    killer.join()
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["stop_reason"] == "preempted"
    stopped_at = result["final_step"]
    assert 2 <= stopped_at < 50
    with ck.Checkpointer(ck.CheckpointConfig(directory=str(workdir))) as checkpointer:
        assert checkpointer.steps() == [stopped_at]
    assert ck.read_metadata(workdir)["step"] == stopped_at
    iterator_files = list((workdir / str(stopped_at) / ck.ITEM_DATA_ITERATOR).glob("process_*.json"))
    assert len(iterator_files) == 1
    # The iterator state points at the next unseen batch.
    assert json.loads(iterator_files[0].read_text())["next_index"] == stopped_at


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = override(get_config("tiny"), {"text.num_layers": 1, "vision.depth": 1})
    spec = sb.SyntheticSpec(batch_size=4, seq_len=44, vocab_size=config.vocab_size,
                            image_token_id=config.image_token_id,
                            tokens_per_image=config.tokens_per_image, max_images=config.max_images,
                            image_size=config.vision.image_size)
    _write_random_params(tmp_path / "imported", config)
    checkpoint = ck.CheckpointConfig(directory=str(tmp_path / "run"), save_every=2, async_save=False)

    def batch_at(index):  # batch 3 (the 4th step) carries a NaN pixel
        batch = sb.synthetic_batch(spec, index)
        if index == 3:
            batch["images"][:, 0, 0, 0] = np.nan
        return batch

    logged = []
    with pytest.raises(preemption.NonFiniteError, match="non-finite values at step 4: loss=nan"):
        train_loop.run_training(
            train_loop.TrainSpec(config, optim=opt.OptimConfig(warmup_steps=1, total_steps=20),
                                 mesh_config=sh.MeshConfig(data=2, fsdp=1, tensor=1)),
            checkpoint=checkpoint,
            make_batches=lambda: iter(grain.MapDataset.range(100).map(batch_at)), num_steps=10,
            hooks=train_loop.TrainHooks(on_log=lambda step, summary: logged.append(step)),
            init_params_from=str(tmp_path / "imported"), devices=jax.devices()[:2],
        )
    assert logged == [1, 2, 3]
    with ck.Checkpointer(checkpoint) as checkpointer:
        assert checkpointer.steps() == [2]
    saved = ck.load_params(pathlib.Path(checkpoint.directory))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved))
