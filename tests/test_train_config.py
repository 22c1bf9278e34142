"""The experiment config tree (`cxrtrek_jax.train.config`): one tree holding the data side's own
pipeline and sequence configs, every field reachable by dotted key, older keys still accepted."""

import dataclasses
import json

import pytest

from cxrtrek_jax.cli import main
from cxrtrek_jax.train import base_config
from cxrtrek_jax.train.config import RENAMED_KEYS, ExperimentConfig, current_key
from data_pipeline.batches.grain_pipeline import PipelineConfig
from data_pipeline.text.sequences import SequenceConfig


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        if isinstance(value, dict):
            keys += _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_tree_embeds_the_pipeline_and_sequence_configs_of_the_data_side():
    cfg = base_config("tiny")
    assert isinstance(cfg.data.pipeline, PipelineConfig)
    assert isinstance(cfg.data.pipeline.sequence, SequenceConfig)
    # Every data-side field is in the printed tree, e.g. the ones an experiment could not set before.
    keys = set(_leaf_keys(cfg.to_dict()))
    for field in dataclasses.fields(PipelineConfig):
        if field.name not in ("augment", "sequence"):
            assert f"data.pipeline.{field.name}" in keys
    for field in dataclasses.fields(SequenceConfig):
        assert f"data.pipeline.sequence.{field.name}" in keys


def test_every_settable_leaf_is_reachable_with_a_dotted_override():
    cfg = base_config("tiny")
    changed = cfg.override({"data.pipeline.read_threads": "5", "data.pipeline.num_epochs": "3",
                            "data.pipeline.sequence.system_prompt": "You read chest X-rays.",
                            "data.pipeline.sequence.window_context": "0.25",
                            "data.pipeline.augment.brightness": "0.0"})
    p = changed.data.pipeline
    assert (p.read_threads, p.num_epochs, p.sequence.system_prompt, p.sequence.window_context,
            p.augment.brightness) == (5, 3, "You read chest X-rays.", 0.25, 0.0)
    assert ExperimentConfig.from_dict(json.loads(changed.to_json())) == changed


def test_older_flat_data_keys_still_work_on_the_command_line_and_in_saved_configs():
    cfg = base_config("tiny")
    by_old = cfg.override({"data.context": "off", "data.length_buckets": "128,256",
                           "data.augment.contrast": "0.0", "data.global_batch_size": "2"})
    by_new = cfg.override({"data.pipeline.sequence.context": "off", "data.pipeline.length_buckets": "128,256",
                           "data.pipeline.augment.contrast": "0.0", "data.pipeline.global_batch_size": "2"})
    assert by_old == by_new
    # A config.json written before the tree: its flat data keys land in their place, and the
    # experiment's own defaults (drop_unfittable) are kept for what it does not mention.
    old = json.loads(cfg.to_json())
    old["data"].pop("pipeline")
    old["data"].update(context="shuffled", stages=[8], length_buckets=[64, 128], global_batch_size=2)
    restored = ExperimentConfig.from_dict(old)
    seq = restored.data.pipeline.sequence
    assert (seq.context, seq.stages, seq.drop_unfittable) == ("shuffled", (8,), True)
    assert restored.data.pipeline.length_buckets == (64, 128) and restored.data.pipeline.global_batch_size == 2
    assert all(current_key(old_key) == new for old_key, new in RENAMED_KEYS.items())
    assert current_key("optim.learning_rate") == "optim.learning_rate"


@pytest.mark.parametrize("key, value", [("data.pipeline.image_size", "64"), ("data.pipeline.source", "x"),
                                        ("data.pipeline.split", "validation"),
                                        ("data.pipeline.sequence.tokens_per_image", "4"),
                                        ("data.pipeline.sequence.max_images", "1")])
def test_fields_the_run_fills_in_are_refused_with_the_reason(key, value):
    with pytest.raises(ValueError, match=r"the run sets it"):
        base_config("tiny").override({key: value})


def test_print_config_shows_the_one_tree(capsys):
    assert main(["train", "--preset", "tiny", "--print-config", "--set", "data.context=shuffled"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["pipeline"]["sequence"]["context"] == "shuffled"
    assert printed["data"]["pipeline"]["length_buckets"] == [512, 768, 1024]
    assert "context" not in printed["data"]  # the old flat key is not a second copy


@pytest.mark.parametrize("context", ["off", "on"])
def test_the_alignment_phase_rows_hold_one_pair_or_one_studys_pairs_of_its_stages(context):
    from cxrtrek_jax.train.run import alignment_phase
    from experiments import get_experiment

    cfg = get_experiment("aligned", "tiny").override({"alignment.context": context,
                                                      "data.pipeline.packing": True})
    phase = alignment_phase(cfg)
    sequence = phase.data.pipeline.sequence
    assert (sequence.context, sequence.stages, phase.data.pipeline.packing) == (context, (1, 2), False)
    assert phase.alignment is None and phase.train.num_steps == cfg.alignment.num_steps
    # The main phase's rows are the staged chains, whatever the alignment phase does.
    assert cfg.data.pipeline.sequence.context == "on" and cfg.data.pipeline.sequence.stages is None


def test_the_alignment_phase_alone_cuts_its_closed_answers():
    from cxrtrek_jax.train.run import alignment_phase
    from experiments import get_experiment

    cfg = get_experiment("aligned", "tiny").override({"alignment.closed_answers": "decisive"})
    assert alignment_phase(cfg).data.pipeline.sequence.closed_answers == "decisive"
    assert cfg.data.pipeline.sequence.closed_answers == "full"  # the chains train the answers as given
    with pytest.raises(ValueError, match=r"alignment\.closed_answers.*'short'"):
        cfg.override({"alignment.closed_answers": "short"})


def test_the_alignment_phase_can_cut_the_answers_of_some_stages_only():
    from cxrtrek_jax.cli.train_cmd import parse_overrides
    from cxrtrek_jax.train.run import alignment_phase
    from experiments import get_experiment

    cfg = get_experiment("aligned", "tiny").override(parse_overrides(
        ["alignment.closed_answers=decisive", "alignment.decisive_stages=2"]))
    sequence = alignment_phase(cfg).data.pipeline.sequence
    assert (sequence.closed_answers, sequence.decisive_stages) == ("decisive", (2,))
    assert cfg.data.pipeline.sequence.decisive_stages is None  # the chains train the answers as given
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"alignment\.decisive_stages .* needs closed_answers 'decisive'"):
        cfg.override({"alignment.closed_answers": "full"})


def test_the_alignment_phase_has_its_own_loss_weighting():
    from cxrtrek_jax.train.run import alignment_phase
    from experiments import get_experiment

    shipped = get_experiment("grounded", "tiny")  # chains: full answers per token; alignment: stage 2 cut
    assert shipped.data.pipeline.sequence.loss_weighting == "token"
    assert (shipped.data.pipeline.sequence.closed_answers, shipped.data.pipeline.sequence.decisive_stages) == (
        "full", None)
    aligned = alignment_phase(shipped).data.pipeline.sequence
    assert (aligned.loss_weighting, aligned.closed_answers, aligned.decisive_stages) == ("token", "decisive", (2,))
    cfg = shipped.override({"data.pipeline.sequence.loss_weighting": "sqrt"})
    assert alignment_phase(cfg).data.pipeline.sequence.loss_weighting == "token"
    # the chains a loss per answer, the alignment phase per token (its default)
    cfg = shipped.override({"data.pipeline.sequence.loss_weighting": "answer"})
    assert cfg.data.pipeline.sequence.loss_weighting == "answer"
    assert alignment_phase(cfg).data.pipeline.sequence.loss_weighting == "token"
    per_answer = cfg.override({"alignment.loss_weighting": "answer"})
    assert alignment_phase(per_answer).data.pipeline.sequence.loss_weighting == "answer"
    assert ExperimentConfig.from_dict(per_answer.to_dict()) == per_answer
    with pytest.raises(ValueError, match=r"alignment\.loss_weighting must be one of .*'turn'"):
        cfg.override({"alignment.loss_weighting": "turn"})


def test_an_unknown_alignment_context_is_refused_naming_the_field():
    from cxrtrek_jax.train.config import AlignmentConfig

    with pytest.raises(ValueError, match=r"alignment\.context.*'shuffled'"):
        AlignmentConfig(context="shuffled")


def test_the_image_label_loss_is_the_alignment_phases_and_labels_only_its_training_rows():
    from cxrtrek_jax.train.config import AlignmentConfig, TrainConfig
    from cxrtrek_jax.train.run import DataPaths, alignment_phase, pipeline_config
    from experiments import get_experiment

    cfg = get_experiment("grounded", "tiny")
    phase = alignment_phase(cfg)
    assert phase.train.image_label_weight == cfg.alignment.image_label_weight > 0
    assert cfg.train.image_label_weight == 0.0  # the chains train without it
    paths = DataPaths(tfds_dir="/nowhere")
    assert pipeline_config(phase, phase.model, paths, "train", training=True).image_labels
    assert not pipeline_config(phase, phase.model, paths, "validation", training=False).image_labels
    assert not pipeline_config(cfg, cfg.model, paths, "train", training=True).image_labels
    with pytest.raises(ValueError, match=r"alignment\.image_label_weight must be >= 0"):
        AlignmentConfig(image_label_weight=-1.0)
    with pytest.raises(ValueError, match=r"train\.image_label_weight must be >= 0"):
        TrainConfig(image_label_weight=float("nan"))
    with pytest.raises(ValueError, match=r"data\.pipeline\.image_labels = True: the run sets it"):
        cfg.override({"data.pipeline.image_labels": "true"})


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{dotted key: leaf value} of a config dict."""
    out = {}
    for name, value in tree.items():
        out.update(_leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name: value})
    return out


def test_the_demo_experiment_is_grounded_at_the_demos_scale_differing_in_exactly_these_fields():
    from cxrtrek_jax.train.registry import get_experiment

    # What `make demo` sets on top of `grounded` (on tiny), written out: its phantom set (3,000
    # studies of 10-12 turns in demo_out/phantom), a 1,024-token BPE, 300 chain steps of batch 4
    # (warmup a tenth, a checkpoint every 150 steps, a log line every 5, 10 validation batches),
    # and tiny widened to 1,024 positions and 4 image slots.
    expected = {
        "name": "demo",
        "data.path": "demo_out/phantom",
        "data.phantom_studies": 3000,
        "data.phantom_turns": [10, 12],
        "data.pipeline.global_batch_size": 4,
        "tokenizer.vocab_size": 1024,
        "optim.warmup_steps": 30,
        "optim.total_steps": 301,
        "train.log_every": 5,
        "train.eval_batches": 10,
        "checkpoint.save_every": 150,
        "model.text.max_positions": 1024,
        "model.max_images": 4,
    }
    grounded = _leaves(json.loads(get_experiment("grounded", "tiny").to_json()))
    demo = _leaves(json.loads(get_experiment("demo", "tiny").to_json()))
    assert set(demo) == set(grounded)
    differing = {key: demo[key] for key in demo if demo[key] != grounded[key] and key != "description"}
    assert differing == expected
    assert "grounded" in demo["description"] and demo["description"] != grounded["description"]
    # The settings the demo sets to what `grounded` already has stay as they are.
    assert (demo["train.num_steps"], demo["optim.learning_rate"], demo["data.pipeline.length_buckets"],
            demo["train.seed"], demo["data.phantom_size"]) == (300, 1e-3, [512, 768, 1024], 0, 256)


def test_the_demo_settings_refuse_what_the_recipe_cannot_do():
    from cxrtrek_jax.train.registry import ABLATIONS, DemoSettings, demo, experiment_names

    with pytest.raises(ValueError, match=r"alignment_steps 7: experiment 'baseline' has no alignment phase"):
        demo("tiny", DemoSettings(recipe="baseline", alignment_steps=7))
    with pytest.raises(ValueError, match=r"recipe must be one of baseline, .*got 'demo'"):
        demo("tiny", DemoSettings(recipe="demo"))
    assert demo("tiny", DemoSettings(recipe="aligned", alignment_steps=7)).alignment.num_steps == 7
    # The demo is an experiment, not one of the study's ablations.
    assert "demo" in experiment_names() and "demo" not in ABLATIONS and len(ABLATIONS) == 11
