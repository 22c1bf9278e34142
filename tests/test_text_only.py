"""The text-only experiment: a pipeline that blanks every image (`PipelineConfig.blank_images`) gives
the unblanked pipeline's tokens with constant pixels, a checkpoint trained so is evaluated (and
inferred) with the same constant images, and the registry names it `text_only`."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

import cxrtrek_jax.decoding
from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import blank_images_of
from cxrtrek_jax.evaluation.runs.model_eval import (
    EvalData,
    checkpoint_identity,
    decode_predictions,
    record_images,
)
from cxrtrek_jax.model import CXRTrekNet, get_config, override, to_dict
from cxrtrek_jax.train.checkpointing import save_params_only
from cxrtrek_jax.train.registry import ABLATIONS, DemoSettings, demo, experiment_names, get_experiment
from data_pipeline.batches.augment import AugmentConfig
from data_pipeline.batches.grain_pipeline import PipelineConfig, build_eval_iterator, build_train_iterator
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.text.sequences import SequenceConfig
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # the evaluations compile the same decoder

# The SigLIP normalisation (x - 0.5) / 0.5 maps this pixel value to 0 (cxrtrek_jax.model.vision).
NORMALISATION_ZERO = 0.5
SIZE = 32  # the tiny preset's image side
TOKEN_FIELDS = ("input_tokens", "target_tokens", "loss_mask", "stage_ids", "segment_ids", "positions")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four phantom studies (box answers, priors), a tokenizer, and one random tiny model saved twice:
    with the text_only experiment in its metadata (as the trainer writes it) and with none."""
    root = tmp_path_factory.mktemp("text_only")
    data = write_phantom_dataset(root / "phantom", 4, seed=4, config=PhantomConfig(size=64, turns_per_study=(4, 6)))
    tokenizer = train_tokenizer(training_texts(read_studies(data)), 500)
    tokenizer.save(root / "tokenizer")
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4})
    params = nnx.to_pure_dict(nnx.state(CXRTrekNet(config, rngs=nnx.Rngs(0)), nnx.Param))
    experiment = get_experiment("text_only", "tiny").to_dict()
    for name, extra in (("blank", {"experiment": experiment}), ("plain", {})):
        save_params_only(str(root / name), params, model_config=to_dict(config),
                         tokenizer_path=str(root / "tokenizer"), extra_metadata=extra)
    return dict(root=root, data=data, tokenizer=tokenizer, blank=str(root / "blank"), plain=str(root / "plain"))


def _pipeline(world, **changes):
    base = dict(source=str(world["data"]), source_kind="json", image_root=str(world["data"].parent),
                image_size=SIZE, global_batch_size=2, length_buckets=(256, 512, 1024), read_threads=0,
                sequence=SequenceConfig(max_images=4, tokens_per_image=4))
    return PipelineConfig(**{**base, **changes})


def _assert_blanked_twins(plain_batches, blank_batches, value):
    """Same count and token fields; image slots: `value` where filled, 0 where empty."""
    assert len(plain_batches) == len(blank_batches) > 0
    informative = 0
    for plain, blank in zip(plain_batches, blank_batches):
        for name in TOKEN_FIELDS + ("image_mask",):
            np.testing.assert_array_equal(blank[name], plain[name], err_msg=name)
        mask = plain["image_mask"]
        assert mask.any()
        assert np.all(blank["images"][mask] == np.float32(value))
        assert np.all(blank["images"][~mask] == 0.0) and np.all(plain["images"][~mask] == 0.0)
        informative += int(np.ptp(plain["images"][mask]) > 0.1)
    assert informative == len(plain_batches)  # the unblanked pixels were real images


def test_blanked_training_batches_keep_every_token_and_slot(world):
    """With crop + intensity augmentation (the crop rewrites the box answers) the blanked training
    batches carry exactly the unblanked batches' tokens; only the pixels are the constant."""
    augment = AugmentConfig(crop_area=(0.5, 0.6), brightness=0.1, contrast=0.2)
    plain = list(build_train_iterator(_pipeline(world, augment=augment, num_epochs=2), world["tokenizer"]))
    blank = list(build_train_iterator(_pipeline(world, augment=augment, num_epochs=2,
                                                blank_images=NORMALISATION_ZERO), world["tokenizer"]))
    _assert_blanked_twins(plain, blank, NORMALISATION_ZERO)


def test_blanked_evaluation_batches_and_black_blanks(world):
    plain = list(build_eval_iterator(_pipeline(world), world["tokenizer"]))
    _assert_blanked_twins(plain, list(build_eval_iterator(_pipeline(world, blank_images=0.0), world["tokenizer"])),
                          0.0)


def test_blank_value_must_be_a_pixel_value(world):
    for bad in (1.5, -0.1, True, "grey"):
        with pytest.raises(ValueError, match=r"PipelineConfig.blank_images must be None .* \[0, 1\]"):
            _pipeline(world, blank_images=bad)
    bad_metadata = {"experiment": {"data": {"pipeline": {"blank_images": 2.0}}}}
    with pytest.raises(ValueError, match=r"checkpoint /x: metadata experiment data.pipeline.blank_images"):
        blank_images_of(bad_metadata, "checkpoint /x")
    assert blank_images_of({}, "imported") is None  # no experiment recorded: the images as they are


def test_registry_text_only_is_grounded_with_blank_images(tmp_path):
    assert "text_only" in experiment_names() and "text_only" in ABLATIONS
    text, grounded = get_experiment("text_only", "tiny"), get_experiment("grounded", "tiny")
    assert text.data.pipeline.blank_images == NORMALISATION_ZERO
    assert grounded.data.pipeline.blank_images is None
    same = dataclasses.replace(text, name=grounded.name, description=grounded.description, data=dataclasses.replace(
        text.data, pipeline=dataclasses.replace(text.data.pipeline, blank_images=None)))
    assert same == grounded
    # The alignment phase reads the same data config, so it is blanked too.
    assert text.alignment is not None
    shown = demo("tiny", DemoSettings(recipe="text_only"))
    assert shown.data.pipeline.blank_images == NORMALISATION_ZERO and "text_only" in shown.description
    assert shown.override({"data.pipeline.blank_images": "none"}).data.pipeline.blank_images is None
    # `python -m experiments.demo --experiment text_only` trains it at the demo's scale.
    from experiments import demo as demo_app

    args = demo_app._parser().parse_args(["--out", str(tmp_path), "--experiment", "text_only"])
    assert demo_app._experiment(args, tmp_path) == shown.override({"data.path": str(tmp_path / "phantom")})


def _decode_spying(monkeypatch, ckpt, data, contexts):
    """(records, [images of every ChainStudy run]) of decode_predictions over every study."""
    real, seen = cxrtrek_jax.decoding.stream_chain, []

    def spy(decoder, state, tokenizer, studies, **kwargs):
        def watched():
            for s in studies:
                seen.append((s.study_id, np.asarray(s.images)))
                yield s
        return real(decoder, state, tokenizer, watched(), **kwargs)

    monkeypatch.setattr(cxrtrek_jax.decoding, "stream_chain", spy)
    records = list(decode_predictions(ckpt, EvalData(data, split=None, max_studies=2), contexts=contexts, max_new_tokens=3))
    return records, seen


def test_evaluation_feeds_a_blanked_checkpoint_blank_images(world, monkeypatch, capsys):
    studies = {s.key: s for s in read_studies(world["data"])}
    records, seen = _decode_spying(monkeypatch, world["blank"], world["data"], ("own", "swapped"))
    assert "images blanked" in capsys.readouterr().out
    assert len(seen) == 2 * 2  # two studies, two contexts
    for study_id, images in seen:
        assert images.shape == (min(studies[study_id].num_images, 4), SIZE, SIZE)
        assert np.all(images == np.float32(NORMALISATION_ZERO))
    # Another study's images are the same blanks: swapped answers are the own answers.
    answers = {c: [(r.study_id, r.turn_index, r.prediction) for r in records if r.context == c] for c in ("own", "swapped")}
    assert answers["own"] and answers["own"] == answers["swapped"]
    assert checkpoint_identity(world["blank"])["blank_images"] == NORMALISATION_ZERO


def test_evaluation_feeds_an_ordinary_checkpoint_its_images(world, monkeypatch, capsys):
    from data_pipeline.files.datasets import open_dataset

    records, seen = _decode_spying(monkeypatch, world["plain"], world["data"], ("own",))
    assert "images blanked" not in capsys.readouterr().out
    expected = {r.study.key: record_images(r, SIZE)[:4] for r in open_dataset(world["data"]).records(None)}
    for study_id, images in seen:
        np.testing.assert_array_equal(images, expected[study_id])
    assert "blank_images" not in checkpoint_identity(world["plain"])


def test_infer_of_a_blanked_checkpoint_says_so(world, capsys):
    out = world["root"] / "infer.jsonl"
    assert main(["infer", "--checkpoint", world["blank"], "--data", str(world["data"]), "--context", "none",
                 "--max-studies", "1", "--max-new-tokens", "2", "--cache-length", "512", "--out", str(out)]) == 0
    assert "images blanked" in capsys.readouterr().err
