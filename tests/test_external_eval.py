"""`cxrtrek eval-external` end to end: a tiny randomly initialised checkpoint asked the questions of
each public set's fixture (`external_fixtures`, published layouts), scored, tabled and written;
P("Yes") of the presence questions checked against a forward pass without the cache; and a
phantom-style IU X-Ray set (phantom images and reports in R2Gen's layout) in a few seconds."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import external_fixtures as fx
from construct_fixtures import write_mimic_cxr
from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.chain import ChatTokens
from cxrtrek_jax.decoding.model_loading import split_for_decoding
from cxrtrek_jax.model import CXRTrekNet, get_config, override, to_dict
from cxrtrek_jax.train.checkpointing import save_params_only
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.files.images import load_image, resize_with_pad
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.text.sequences import DEFAULT_SYSTEM_PROMPT, place_placeholders
from data_pipeline.text.tokenizer import load_tokenizer, train_tokenizer, training_texts

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # every call compiles the same decoder
# One batch size and answer budget everywhere: every call compiles the same shapes (cached).
FAST = ["--max-new-tokens", "4", "--batch-size", "2", "--bootstrap-resamples", "20", "--no-meteor", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tokenizer trained on a small phantom set and a tiny random model with two image slots."""
    root = tmp_path_factory.mktemp("external")
    phantom = write_phantom_dataset(root / "phantom", 2, seed=4, config=PhantomConfig(size=64))
    tokenizer = train_tokenizer(training_texts(read_studies(phantom)), 500)
    tokenizer.save(root / "tokenizer")
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 2})
    params = _random_params(config)
    save_params_only(str(root / "ckpt"), params, model_config=to_dict(config), tokenizer_path=str(root / "tokenizer"))
    model = nnx.merge(*split_for_decoding(config, params))
    return dict(root=root, ckpt=str(root / "ckpt"), phantom=phantom, model=model, config=config)


def _random_params(config, seed: int = 0) -> dict:
    """Random parameters of the model's shapes (norm scales near 1), drawn with numpy: building the
    model eagerly to initialise it takes far longer on CPU than the evaluations under test."""
    abstract = nnx.eval_shape(lambda: CXRTrekNet(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        value = 1.0 + 0.1 * noise if "scale" in str(path[-1]) else 0.05 * noise
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))


def _run(world, name, root, out, *extra):
    return main(["eval-external", "--set", name, "--root", str(root), "--checkpoint", world["ckpt"],
                 "--out", str(out), *FAST, *extra])


def _mimic_root(tmp_path):
    import csv

    source = write_mimic_cxr(tmp_path)
    with open(source.files["split"], newline="") as f:
        rows = list(csv.reader(f))
    rows = [rows[0]] + [r[:3] + ["test"] for r in rows[1:]]
    with open(source.files["split"], "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return source.options["root"], ["--reports-root", source.options["reports_root"]]


WRITERS = {"iu-xray": fx.write_iu_csv, "chexpert": fx.write_chexpert, "vindr-cxr": fx.write_vindr,
           "vqa-rad": fx.write_vqa_rad, "slake": fx.write_slake}
EXPECTED = {"iu-xray": ("bleu_4", "rouge_l", "cider_d", "ce_micro_f1"), "mimic-cxr": ("bleu_1", "ce5_micro_f1"),
            "chexpert": ("auroc[Cardiomegaly]", "mean_auroc_competition5", "f1@0.5[Edema]"),
            "vindr-cxr": ("map@0.4", "map@0.5", "ap@0.4[Pleural effusion]"),
            "vqa-rad": ("closed_accuracy", "open_recall", "open_exact_match"), "slake": ("closed_accuracy", "open_recall")}


@pytest.mark.slow  # ~5 s a set once compiled, ~30 s for the first on a loaded 2-core machine
@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_set_is_read_asked_scored_and_written(world, tmp_path, capsys, name):
    if name == "mimic-cxr":
        root, extra = _mimic_root(tmp_path)
    else:
        root, extra = WRITERS[name](tmp_path), []
    if name == "vqa-rad":
        extra = ["--train-file", "trainset.json"]
    out = tmp_path / "out"
    assert _run(world, name, root, out, *extra) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "external.json").read_text())
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert document["set"]["name"] == name and document["set"]["items"] == len(lines) > 0
    assert f"{name} (" in printed and "items from" in printed and "skipped" in printed  # the reader's counts
    metrics = document["scores"]["metrics"]
    for metric in EXPECTED[name]:
        assert metric in metrics and metric in printed
        value = metrics[metric]["value"]
        assert value is None or 0.0 <= value <= (10.0 if metric.startswith("cider") else 1.0)
    if name in ("iu-xray", "mimic-cxr"):
        assert "not available offline" in printed and document["scores"]["baseline"]["name"] == "constant normal report"
        assert document["settings"]["report_question"] == "Write the radiology report for this chest X-ray."
    if name == "vqa-rad":
        assert "fitted on the training file" in document["scores"]["baseline"]["name"]
        assert document["scores"]["baseline"]["metrics"]["closed_accuracy"]["value"] == pytest.approx(0.5)  # "yes"
    if name == "vindr-cxr":
        sizes = {tuple(line["image_size"]) for line in lines}
        assert sizes == set(fx.VINDR_IMAGES.values())
    if name == "chexpert":
        assert all(0.0 < line["p_yes"] < 1.0 for line in lines)


def test_presence_probability_equals_a_forward_pass_without_the_cache(world, tmp_path):
    root = fx.write_chexpert(tmp_path)
    out = tmp_path / "out"
    assert _run(world, "chexpert", root, out) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(world["root"] / "tokenizer")
    config = world["config"]
    chat = ChatTokens(tokenizer, config.tokens_per_image)
    yes, no = chat.answer_body("Yes")[0], chat.answer_body("No")[0]
    graphdef, params = nnx.split(world["model"])

    @jax.jit
    def last_logits(params, tokens, length, images, image_mask):  # no cache: the whole sequence at once
        model = nnx.merge(graphdef, params)
        segment_ids = (jnp.arange(tokens.shape[1])[None, :] < length).astype(jnp.int32)
        logits, _ = model(tokens, images, image_mask, segment_ids=segment_ids)
        return logits[0, length - 1]

    for line in lines[:3] + lines[-2:]:  # the first questions and the last ones, asked after rewinds
        image = resize_with_pad(load_image(root / line["group"].split("/", 1)[1]), config.vision.image_size)
        question = place_placeholders(line["question"], 1, tokenizer.format.image)
        ids = chat.prompt(DEFAULT_SYSTEM_PROMPT) + chat.question(question)
        tokens = np.full((1, 256), tokenizer.pad_id, np.int32)
        tokens[0, :len(ids)] = ids
        images = np.zeros((1, config.max_images, *image.shape), np.float32)
        images[0, 0] = image
        logits = last_logits(params, jnp.asarray(tokens), len(ids), jnp.asarray(images), jnp.asarray([[True, False]]))
        margin = float(logits[yes]) - float(logits[no])
        assert line["p_yes"] == pytest.approx(1 / (1 + np.exp(-margin)), abs=2e-4)


def _phantom_iu(world, tmp_path):
    """The phantom's studies in R2Gen's layout: their first image(s) and stage-8 reports as the test list."""
    import shutil

    root = tmp_path / "phantom_iu"
    entries = []
    for study in read_studies(world["phantom"]):
        report = next(item.answer for item in study.items if item.stage == 8)
        paths = []
        for k, image in enumerate(study.images[:2]):
            target = root / "images" / study.study_id / f"{k}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(world["phantom"].parent / image, target)
            paths.append(f"{study.study_id}/{k}.png")
        entries.append({"id": study.study_id, "report": report, "image_path": paths, "split": "test"})
    (root / "annotation.json").write_text(json.dumps({"train": [], "val": [], "test": entries}))
    return root, len(entries)


def test_a_phantom_iu_style_set_runs_quickly(world, tmp_path, capsys):
    import time

    root, count = _phantom_iu(world, tmp_path)
    began = time.perf_counter()
    assert _run(world, "iu-xray", root, tmp_path / "out") == 0
    elapsed = time.perf_counter() - began
    document = json.loads((tmp_path / "out" / "external.json").read_text())
    assert document["set"]["items"] == count and document["set"]["split"] == "test (R2Gen annotation.json)"
    assert elapsed < 60, f"{count} phantom studies took {elapsed:.0f} s"


def test_user_errors_are_clear(world, tmp_path, capsys):
    root = fx.write_vqa_rad(tmp_path)
    records = json.loads((root / "testset.json").read_text())
    records[2]["answer"] = ""
    (root / "testset.json").write_text(json.dumps(records))
    assert _run(world, "vqa-rad", root, tmp_path / "out") == 2
    assert "testset.json: [2]: field 'answer': expected a non-empty string" in capsys.readouterr().err
    assert _run(world, "chexpert", root, tmp_path / "out", "--train-file", "x.json") == 2
    assert "train_file" in capsys.readouterr().err
    assert _run(world, "vqa-rad", root, tmp_path / "out", "--bertscore-model", str(tmp_path)) == 2
    assert "iu-xray and mimic-cxr only" in capsys.readouterr().err
    assert main(["eval-external", "--set", "slake", "--root", str(root), "--checkpoint", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "no such directory" in capsys.readouterr().err
