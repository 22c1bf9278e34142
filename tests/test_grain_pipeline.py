"""The Grain input pipeline on hand-made studies: slicing, buckets, packing, masks, variants,
augmentation, restore, the TFDS and JSON sources, and worker processes."""

import dataclasses
import json

import grain
import numpy as np
import pytest
from PIL import Image

from data_pipeline.files import cxrtrek_json as cj
from data_pipeline.files import tfds_builder as tb
from data_pipeline.batches.augment import AugmentConfig
from data_pipeline.schema.boxes import parse_boxes
from data_pipeline.batches.grain_pipeline import (
    BATCH_FIELDS,
    IMAGE_LABEL_FIELDS,
    PipelineConfig,
    PrepareStudy,
    build_eval_iterator,
    build_train_iterator,
)
from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS, study_image_labels
from data_pipeline.files.images import ImageLoadError, load_image, resize_with_pad
from data_pipeline.batches.packing import choose_bucket
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.sequences import SequenceConfig, SequenceStats, build_sequences
from data_pipeline.files.sources import JsonStudySource, TfdsStudySource
from data_pipeline.text.tokenizer import train_tokenizer

N_IMG = 2  # tokens per image
SIZE = 8  # model image size
BOX = "<|ref|> left effusion <|/ref|> <|box|>(55.0, 60.0), (90.0, 95.0)<|/box|>"


def _item(stage, count, question, answer, qtype="captioning", task="Findings_Identification"):
    return QAItem(stage=stage, task_type=task, qtype=qtype, image_input_count=count, question=question, answer=answer)


def _studies():
    """Seven studies: one and two current views, a prior view, a box answer, varied answer lengths."""
    out = [
        Study(study_id="s0", pat_id="p0", images=("p0/s0/a.png",), items=(
            _item(1, 1, "<image>\nWhich view is this?", "PA view."),
            _item(2, 1, "Is there an effusion?", "Yes."),
            _item(3, 1, "Where is the effusion?", BOX, "detection", "Findings_Detection"),
        )),
        Study(study_id="s1", pat_id="p1", images=("p1/s1/a.png", "p1/s1/b.png"), items=(
            _item(1, 2, "<image>\n<image>\nWhich views are these?", "PA and lateral."),
            _item(2, 2, "Is there a pneumothorax?", "No.", "yes_no"),
            _item(8, 2, "Write the report.", "No acute findings. No effusion or pneumothorax."),
        )),
        Study(study_id="s2", pat_id="p2", ref_study_id="s2-prior", images=("p2/s2/a.png", "p2/s2/prior.png"), items=(
            _item(1, 1, "<image>\nIs this an AP view?", "Yes."),
            _item(2, 1, "Is there an effusion?", "Yes, a small one."),
            _item(5, 2, "<image>\nCompared with the prior, is it new?", "It is new."),
            _item(8, 2, "Write the report.", "New small left effusion."),
        )),
    ]
    for i in range(3, 7):
        out.append(Study(study_id=f"s{i}", pat_id=f"p{i}", images=(f"p{i}/s{i}/a.png",), items=(
            _item(1, 1, "<image>\nWhich view is this?", "AP view." * (i - 2)),
            _item(2, 1, "Is there cardiomegaly?", "Yes." if i % 2 else "No.", "yes_no"),
            _item(7, 1, "What do you advise?", "Follow up in " + "six " * i + "weeks."),
        )))
    return out


STUDIES = _studies()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """JSON file, image root and a TFDS build (one train split) of STUDIES."""
    root = tmp_path_factory.mktemp("grain")
    image_root = root / "images"
    for n, study in enumerate(STUDIES):
        for k, rel in enumerate(study.images):
            path = image_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = 20 + 2 * k, 16 + n
            pixels = np.add.outer(np.arange(h) * (3 + n), np.arange(w) * (5 + k)) % 251
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    json_path = root / "studies.json"
    cj.write_studies(json_path, STUDIES)
    data_dir = root / "tfds"
    options = tb.BuildOptions((str(json_path),), split=tb.SplitConfig(val_fraction=0.0, test_fraction=0.0))
    summary = tb.build_dataset(options, image_root, data_dir)
    assert summary.examples["train"] == len(STUDIES)
    return {"json": str(json_path), "image_root": str(image_root), "tfds": str(data_dir)}


@pytest.fixture(scope="module")
def tok():
    texts = [cj.DEFAULT_SYSTEM_PROMPT] + [t for s in STUDIES for i in s.items for t in (i.question, i.answer)]
    return train_tokenizer(texts * 10, 600)


_SEQUENCE_FIELDS = {f.name for f in dataclasses.fields(SequenceConfig)}


def _config(data, **changes):
    """The test pipeline; keys of `SequenceConfig` (context, stages, max_images, ...) go to `sequence`."""
    sequence = dict(max_images=2, tokens_per_image=N_IMG)
    sequence.update({k: changes.pop(k) for k in list(changes) if k in _SEQUENCE_FIELDS})
    base = dict(
        source=data["json"],
        source_kind="json",
        image_root=data["image_root"],
        image_size=SIZE,
        global_batch_size=2,
        length_buckets=(48, 64, 96, 128),
        augment=AugmentConfig.none(),
        read_threads=0,
        sequence=SequenceConfig(**sequence),
    )
    base.update(changes)
    return PipelineConfig(**base)


def _take(iterator, count):
    out = []
    for _ in range(count):
        batch = next(iterator)
        out.append((batch, iterator.last_study_ids))
    return out


def _drain(iterator):
    return [(batch, iterator.last_study_ids) for batch in iterator]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (x, ids_x), (y, ids_y) in zip(a, b):
        assert ids_x == ids_y
        assert sorted(x) == sorted(y)
        for name in x:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def _expected_image(data, study, index):
    return resize_with_pad(load_image(f"{data['image_root']}/{study.images[index]}"), SIZE)


BY_ID = {s.key: s for s in STUDIES}


# ----------------------------------------------------------------------------- config


def test_config_checks(data):
    with pytest.raises(ValueError, match="image_root"):
        PipelineConfig(source=data["json"], source_kind="json")
    with pytest.raises(ValueError, match="ascending"):
        _config(data, length_buckets=(64, 32))
    with pytest.raises(ValueError, match="context"):
        _config(data, context="sideways")
    with pytest.raises(ValueError, match="stage"):
        _config(data, stages=(9,))
    cfg = _config(data, global_batch_size=6)
    assert cfg.per_process_batch_size(3) == 2 and cfg.max_length == 128
    with pytest.raises(ValueError, match="does not split"):
        cfg.per_process_batch_size(4)
    with pytest.raises(ValueError, match="process_index"):
        build_train_iterator(cfg, None, process_index=3, process_count=3)


# ----------------------------------------------------------------------------- layout


def test_eval_batches_equal_padded_sequences_in_source_order(data, tok):
    """Without packing: each row is one study's sequence padded to the batch's bucket, with its images;
    one pass in source order; the last partial batch is filled with padding rows."""
    cfg = _config(data)
    iterator = build_eval_iterator(cfg, tok)
    assert isinstance(iterator, grain.DatasetIterator)
    batches = _drain(iterator)
    assert [ids for _, row_ids in batches for ids in row_ids] == [(s.key,) for s in STUDIES] + [()]
    seq_cfg = cfg.sequence_config()
    for batch, row_ids in batches:
        assert set(batch) == set(BATCH_FIELDS)
        assert batch["images"].shape == (2, 2, SIZE, SIZE) and batch["images"].dtype == np.float32
        assert batch["image_mask"].dtype == bool and batch["input_tokens"].dtype == np.int32
        lengths = []
        for r, ids in enumerate(row_ids):
            if not ids:
                assert not batch["segment_ids"][r].any() and not batch["loss_mask"][r].any()
                assert (batch["input_tokens"][r] == tok.pad_id).all() and not batch["image_mask"][r].any()
                assert not batch["images"][r].any()
                continue
            study = BY_ID[ids[0]]
            (seq,), _ = build_sequences(study, tok, seq_cfg)
            n = len(seq)
            lengths.append(n)
            for name in ("input_tokens", "target_tokens", "loss_mask", "stage_ids", "positions"):
                np.testing.assert_array_equal(batch[name][r, :n], getattr(seq, name), err_msg=name)
            assert (batch["input_tokens"][r, n:] == tok.pad_id).all() and not batch["loss_mask"][r, n:].any()
            np.testing.assert_array_equal(batch["segment_ids"][r], (np.arange(batch["segment_ids"].shape[1]) < n))
            assert batch["image_mask"][r].tolist() == [k < study.num_images for k in range(2)]
            for k in range(study.num_images):
                np.testing.assert_array_equal(batch["images"][r, k], _expected_image(data, study, k))
        assert batch["input_tokens"].shape[1] == choose_bucket(max(lengths), cfg.length_buckets)
    assert iterator.stats.batches.padding_rows == 1 and iterator.stats.studies.studies == len(STUDIES)


def test_image_labels_are_each_row_study_labels(data, tok):
    """With `image_labels`, every row carries its study's stage-2 finding labels (one row per study
    or per turn); padding rows and pipelines without labels carry none."""
    none = np.zeros(len(IMAGE_LABEL_KINDS), np.float32)
    known_total = 0.0
    for context in ("on", "off"):
        cfg = _config(data, image_labels=True, context=context)
        for batch, row_ids in _drain(build_eval_iterator(cfg, tok)):
            assert set(batch) == set(BATCH_FIELDS) | set(IMAGE_LABEL_FIELDS)
            for r, ids in enumerate(row_ids):
                labels, known = study_image_labels(BY_ID[ids[0]]) if ids else (none, none)
                np.testing.assert_array_equal(batch["image_labels"][r], labels)
                np.testing.assert_array_equal(batch["image_label_mask"][r], known)
                known_total += known.sum()
    assert known_total > 0
    assert not set(IMAGE_LABEL_FIELDS) & set(next(build_eval_iterator(_config(data), tok)))
    with pytest.raises(ValueError, match="image_labels needs packing off"):
        _config(data, image_labels=True, packing=True)


def test_loss_mask_covers_answers_and_stage_ids_label_turns(data, tok):
    """Hand check on study s0: answer tokens (and their end-of-turn) are scored, labelled by stage."""
    iterator = build_eval_iterator(_config(data, global_batch_size=1), tok)
    batch = next(iterator)
    assert iterator.last_study_ids == (("p0/s0",),)
    targets, mask, stages = batch["target_tokens"][0], batch["loss_mask"][0], batch["stage_ids"][0]
    scored = mask > 0
    answers = [tok.encode_text(item.answer) + [tok.end_of_turn_id] for item in STUDIES[0].items]
    assert targets[scored].tolist() == [t for a in answers for t in a]
    assert stages[scored].tolist() == [item.stage for item, a in zip(STUDIES[0].items, answers) for _ in a]
    assert set(stages[batch["segment_ids"][0] > 0].tolist()) == {0, 1, 2, 3}
    assert np.count_nonzero(batch["input_tokens"][0] == tok.image_id) == N_IMG


def test_packing_first_fit_segments_positions_and_image_slots(data, tok):
    cfg = _config(data, packing=True, length_buckets=(64, 128, 256), global_batch_size=2)
    batches = _drain(build_eval_iterator(cfg, tok))
    seq_cfg = cfg.sequence_config()
    seen = []
    for batch, row_ids in batches:
        assert batch["input_tokens"].shape[1] in cfg.length_buckets
        for r, ids in enumerate(row_ids):
            start = slot = 0
            for segment, study_id in enumerate(ids, start=1):
                study = BY_ID[study_id]
                (seq,), _ = build_sequences(study, tok, seq_cfg)
                span = slice(start, start + len(seq))
                assert (batch["segment_ids"][r, span] == segment).all()
                np.testing.assert_array_equal(batch["positions"][r, span], np.arange(len(seq)))
                np.testing.assert_array_equal(batch["input_tokens"][r, span], seq.input_tokens)
                np.testing.assert_array_equal(batch["loss_mask"][r, span], seq.loss_mask)
                np.testing.assert_array_equal(batch["stage_ids"][r, span], seq.stage_ids)
                for k in range(study.num_images):
                    np.testing.assert_array_equal(batch["images"][r, slot], _expected_image(data, study, k))
                    slot += 1
                start += len(seq)
                seen.append(study_id)
            assert not batch["segment_ids"][r, start:].any()
            assert batch["image_mask"][r].tolist() == [k < slot for k in range(2)]
    assert sorted(seen) == sorted(BY_ID)  # every study exactly once
    assert any(len(ids) > 1 for _, row_ids in batches for ids in row_ids)  # something was packed
    assert len(batches) < 4  # fewer batches than one sequence per row


def test_turns_needing_more_images_than_max_images_are_dropped_and_counted(data, tok):
    iterator = build_eval_iterator(_config(data, max_images=1), tok)
    batches = _drain(iterator)
    assert all(batch["image_mask"].shape[1] == 1 for batch, _ in batches)
    assert iterator.stats.studies.turns_dropped_image_limit > 0
    full = build_eval_iterator(_config(data), tok)
    _drain(full)
    assert full.stats.studies.turns_dropped_image_limit == 0
    assert (iterator.stats.studies.turns_kept + iterator.stats.studies.turns_dropped_image_limit
            == full.stats.studies.turns_kept)


# ----------------------------------------------------------------------------- variants


def _row_sequences(batches):
    """{study id: [(input tokens, loss mask, stage ids) of each of its rows]} (no packing)."""
    out = {}
    for batch, row_ids in batches:
        for r, ids in enumerate(row_ids):
            if ids:
                n = int(batch["segment_ids"][r].sum())
                row = tuple(batch[name][r, :n] for name in ("input_tokens", "loss_mask", "stage_ids"))
                out.setdefault(ids[0], []).append(row)
    return out


@pytest.mark.parametrize(
    "changes",
    [dict(context="off"), dict(context="shuffled", seed=3), dict(stages=(2, 8)), dict(no_prior=True)],
    ids=["context-off", "shuffled", "stage-subset", "no-prior"],
)
def test_variants_match_the_sequence_builder(data, tok, changes):
    cfg = _config(data, **changes)
    rows = _row_sequences(_drain(build_eval_iterator(cfg, tok)))
    for study in STUDIES:
        expected, _ = build_sequences(study, tok, cfg.sequence_config())
        got = rows.get(study.key, [])
        assert len(got) == len(expected)
        for (tokens, mask, stages), seq in zip(got, expected):
            np.testing.assert_array_equal(tokens, seq.input_tokens)
            np.testing.assert_array_equal(mask, seq.loss_mask)
            np.testing.assert_array_equal(stages, seq.stage_ids)
    if cfg.sequence.context == "off":  # one turn per row: each row scores one stage only
        assert sum(len(v) for v in rows.values()) == sum(len(s.items) for s in STUDIES)
        for study_rows in rows.values():
            for _, mask, stages in study_rows:
                assert len(set(stages[mask > 0].tolist())) == 1
    if changes.get("stages"):
        assert {s for r in rows.values() for _, m, st in r for s in st[m > 0].tolist()} <= {2, 8}


def test_shuffled_context_changes_the_stage_order(data, tok):
    orders = set()
    for seed in range(4):
        rows = _row_sequences(_drain(build_eval_iterator(_config(data, context="shuffled", shuffle_seed=seed), tok)))
        stages = rows["p2/s2"][0][2]
        orders.add(tuple(dict.fromkeys(s for s in stages.tolist() if s)))
    assert len(orders) > 1 and all(sorted(o) == [1, 2, 5, 8] for o in orders)


def test_truncation_drops_whole_turns_and_is_counted(data, tok):
    cfg = _config(data, length_buckets=(40, 56), long_chains="truncate")
    iterator = build_eval_iterator(cfg, tok)
    rows = _row_sequences(_drain(iterator))
    expected = SequenceStats()
    for study in STUDIES:
        seqs, stats = build_sequences(study, tok, cfg.sequence_config())
        expected += stats
        (tokens, mask, _), = rows[study.key]
        np.testing.assert_array_equal(tokens, seqs[0].input_tokens)
        # The row ends right after a scored end-of-turn: no turn cut in half.
        assert mask[-1] == 1.0 and len(tokens) <= 56
    assert expected.turns_dropped_truncation > 0
    assert iterator.stats.studies == expected


# ----------------------------------------------------------------------------- processes and epochs


def test_process_slices_cover_every_epoch_exactly_once(data, tok):
    count, epochs = 3, 2
    cfg = _config(data, global_batch_size=count, num_epochs=epochs, seed=5)
    per_process = []
    for p in range(count):
        batches = _drain(build_train_iterator(cfg, tok, process_index=p, process_count=count))
        assert all(b["input_tokens"].shape[0] == 1 for b, _ in batches)
        per_process.append([ids[0][0] for _, ids in batches])
    n = len(STUDIES)
    orders = []
    for e in range(epochs):
        epoch_ids = []
        for p, ids in enumerate(per_process):
            share = len(range(p, n, count))
            assert len(ids) == epochs * share
            epoch_ids += ids[e * share : (e + 1) * share]
        assert sorted(epoch_ids) == sorted(BY_ID)  # all studies, none twice, across processes
        share0 = len(range(0, n, count))
        orders.append(per_process[0][e * share0 : (e + 1) * share0])
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_augmentation_does_not_depend_on_the_process_count(data, tok):
    cfg = _config(data, augment=AugmentConfig(), num_epochs=1, global_batch_size=2)
    one = {ids[0][0]: b for b, ids in _drain(build_train_iterator(dataclasses.replace(cfg, global_batch_size=1), tok))}
    two = {
        ids[0][0]: b
        for p in range(2)
        for b, ids in _drain(build_train_iterator(cfg, tok, process_index=p, process_count=2))
    }
    assert sorted(one) == sorted(two) == sorted(BY_ID)
    for study_id, batch in one.items():
        _assert_same_batches([(batch, ())], [(two[study_id], ())])


def test_training_is_seeded(data, tok):
    cfg = _config(data, augment=AugmentConfig(), num_epochs=1, read_threads=2)  # threads keep the order
    first = _drain(build_train_iterator(cfg, tok))
    _assert_same_batches(first, _drain(build_train_iterator(cfg, tok)))
    other = _drain(build_train_iterator(dataclasses.replace(cfg, seed=1), tok))
    assert [ids for _, ids in first] != [ids for _, ids in other]


def test_answer_flips_reach_training_rows_only(data, tok):
    """With `answer_flips` (and no augmentation) training rows flip some bare yes/no answers,
    newly drawn each epoch, each flipped one without loss; evaluation rows never flip."""
    cfg = _config(data, answer_flips=0.5, num_epochs=4, read_threads=2)
    flips = {True: 0, False: 0}
    opposite = {"Yes.": "No.", "No.": "Yes."}
    for batch, row_ids in _drain(build_train_iterator(cfg, tok)):
        for r, ids in enumerate(row_ids):
            if not ids or BY_ID[ids[0]].items[1].qtype != "yes_no":
                continue
            answer = BY_ID[ids[0]].items[1].answer  # the stage-2 turn
            stage_2 = batch["stage_ids"][r] == 2
            trained = tok.decode(batch["target_tokens"][r][stage_2 & (batch["loss_mask"][r] > 0)])
            shown = tok.decode(batch["target_tokens"][r][stage_2], stop_at_end_of_turn=False)
            flipped = trained == ""
            assert shown.endswith(opposite[answer] if flipped else answer), (ids, shown)
            assert flipped or trained == answer
            flips[flipped] += 1
    assert flips[True] > 0 and flips[False] > 0, flips  # 5 studies x 4 epochs, each drawn anew
    for batch, row_ids in _drain(build_eval_iterator(cfg, tok)):
        for r, ids in enumerate(row_ids):
            if ids and BY_ID[ids[0]].items[1].qtype == "yes_no":
                stage_2 = (batch["stage_ids"][r] == 2) & (batch["loss_mask"][r] > 0)
                assert tok.decode(batch["target_tokens"][r][stage_2]) == BY_ID[ids[0]].items[1].answer


def test_augmentation_crops_images_and_moves_boxes_together(data, tok):
    """Training batches carry cropped, intensity-changed images, drawn anew each epoch (3 epochs:
    3 different versions of each study), and the s0 box answer rewritten with them."""
    cfg = _config(data, augment=AugmentConfig(crop_area=(0.5, 0.6), brightness=0.1, contrast=0.2), num_epochs=3)
    plain = {ids[0][0]: b for b, ids in _drain(build_eval_iterator(_config(data, global_batch_size=1), tok))}
    changed_images = changed_answers = 0
    seen = {study_id: set() for study_id in BY_ID}  # a study's first image in each epoch
    for batch, row_ids in _drain(build_train_iterator(cfg, tok)):
        for r, ids in enumerate(row_ids):
            if not ids:
                continue
            changed_images += not np.array_equal(batch["images"][r], plain[ids[0]]["images"][0])
            seen[ids[0]].add(batch["images"][r, 0].tobytes())
            assert 0.0 <= batch["images"][r].min() and batch["images"][r].max() <= 1.0
            if ids[0] == "p0/s0":
                scored = (batch["stage_ids"][r] == 3) & (batch["loss_mask"][r] > 0)
                text = tok.decode(batch["target_tokens"][r][scored].tolist())
                changed_answers += "(55.0, 60.0)" not in text
                assert "<|box|>" in text and "left effusion" in text
    assert changed_images > 0 and changed_answers > 0
    assert all(len(images) == 3 for images in seen.values()), "drawn anew each epoch"


class _ScriptedRng:
    """Stands in for the np.random.Generator of `PrepareStudy`: `uniform(low, high)` returns
    low + u * (high - low) for the next scripted u (in [0, 1]); any other draw is an error."""

    def __init__(self, us):
        self.us = list(us)

    def uniform(self, low, high):
        return low + self.us.pop(0) * (high - low)


class _ArrayRecord:
    """A `StudyRecord` whose images are arrays already (float [H, W] in [0, 1])."""

    def __init__(self, study, images):
        self.study, self.images = study, images

    def load_image(self, index):
        return self.images[index].copy()


def _two_view_study(box_answer):
    """A current view (16 x 16 px) and a prior (15 x 15 px); the box answer is about the current one."""
    return Study(study_id="h0", pat_id="ph", ref_study_id="h0-prior", images=("ph/h0/a.png", "ph/h0/prior.png"),
                 items=(_item(1, 1, "<image>\nWhich view is this?", "PA view."),
                        _item(3, 1, "Where is the effusion?", box_answer, "detection", "Findings_Detection"),
                        _item(5, 2, "<image>\nCompared with the prior, is it new?", "It is new.")))


# Every pixel distinct, so a crop is identified by its values.
_CURRENT = (np.arange(16 * 16, dtype=np.float32).reshape(16, 16) + 0.5) / 256
_PRIOR = 0.2 + 0.6 * (np.arange(15 * 15, dtype=np.float32).reshape(15, 15) + 0.5) / 225
_HAND_CONFIG = AugmentConfig(crop_area=(0.2, 0.3), crop_aspect=(0.5, 4.0), brightness=0.1, contrast=0.2)


def _intensity(x, shift, factor):
    """The documented change, x -> clip((x - mean) * factor + mean + shift, 0, 1), mean over x."""
    return np.clip((x - x.mean()) * factor + x.mean() + shift, 0.0, 1.0)


def _trained_answers(tok, sequence):
    """{stage: decoded trained answer tokens} of a one-turn-per-stage sequence."""
    trained = sequence.loss_mask > 0
    return {int(s): tok.decode(sequence.target_tokens[trained & (sequence.stage_ids == s)].tolist())
            for s in np.unique(sequence.stage_ids[trained])}


def test_prepare_study_crops_both_views_with_one_window_by_hand(data, tok):
    """A hand-worked study, drawing in the documented order (area, aspect, left, top, then shift and
    factor per image in image order): area 0.25 and aspect 1 give a half-by-half window at left 0.5,
    top 0; the box (55, 15)-(95, 35) lies inside it, so the window is not widened. The current view
    (16 px) keeps rows 0:8, columns 8:16; the prior (15 px) the same fractions rounded outwards,
    rows 0:8, columns 7:15: both 8 x 8 = the model size, so no resampling. Each gets its own
    intensity change; the box is mapped to the window's scale, (10, 30)-(90, 70); nothing else changes."""
    study = _two_view_study("<|ref|> left effusion <|/ref|> <|box|>(55.0, 15.0), (95.0, 35.0)<|/box|>")
    draws = [0.5, 1 / 3, 1.0, 0.0, 0.75, 0.25, 0.1, 0.9]  # area, aspect, left, top, (shift, factor) x 2
    rng = _ScriptedRng(draws)
    prepared = PrepareStudy(tok, _config(data).sequence_config(), SIZE, _HAND_CONFIG)(
        _ArrayRecord(study, [_CURRENT, _PRIOR]), rng)
    assert rng.us == []  # exactly the eight documented draws
    assert sorted(prepared.images) == [0, 1]
    np.testing.assert_allclose(prepared.images[0], _intensity(_CURRENT[0:8, 8:16], 0.05, 0.9), atol=1e-6)
    np.testing.assert_allclose(prepared.images[1], _intensity(_PRIOR[0:8, 7:15], -0.08, 1.16), atol=1e-6)
    # Only the box moved: the same tokens as the study written with the mapped box, unaugmented.
    moved = _two_view_study("<|ref|> left effusion <|/ref|> <|box|>(10.0, 30.0), (90.0, 70.0)<|/box|>")
    (seq,) = prepared.sequences
    (plain,) = PrepareStudy(tok, _config(data).sequence_config(), SIZE)(_ArrayRecord(moved, [_CURRENT, _PRIOR])).sequences
    for name in ("input_tokens", "target_tokens", "loss_mask", "stage_ids"):
        np.testing.assert_array_equal(getattr(seq, name), getattr(plain, name), err_msg=name)
    assert "(10.0, 30.0), (90.0, 70.0)" in _trained_answers(tok, seq)[3]


def test_prepare_study_widens_the_window_to_the_box_on_the_current_views_grid(data, tok):
    """The drawn window (rows 0.5:1, columns 0:0.5) misses the box (55, 15)-(95, 35), so it widens
    to rows 0.15:1, columns 0:0.95, then snaps outwards to the current view's 16 px grid: rows
    2:16, columns 0:16, i.e. top 0.125, height 0.875, full width. The box on that window's scale:
    x as is, y (15 - 12.5) / 0.875 = 2.9 and (35 - 12.5) / 0.875 = 25.7 (one decimal). Both crops
    (14 x 16 and 14 x 15 px) fit the model size as 7 x 8 content over one padding row at the
    bottom, which the intensity change (shift > 0) must leave black."""
    study = _two_view_study("<|ref|> left effusion <|/ref|> <|box|>(55.0, 15.0), (95.0, 35.0)<|/box|>")
    rng = _ScriptedRng([0.5, 1 / 3, 0.0, 1.0, 0.9, 0.5, 0.6, 0.5])  # shifts 0.08, 0.02; factors 1
    prepared = PrepareStudy(tok, _config(data).sequence_config(), SIZE, _HAND_CONFIG)(
        _ArrayRecord(study, [_CURRENT, _PRIOR]), rng)
    assert rng.us == []
    (box,) = parse_boxes(_trained_answers(tok, prepared.sequences[0])[3])
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((55.0, 2.9, 95.0, 25.7), abs=1e-9)
    for k, source in ((0, _CURRENT[2:16, :]), (1, _PRIOR[1:15, :])):
        image = prepared.images[k]
        assert image.shape == (SIZE, SIZE)
        assert (image[7] == 0).all() and (image[:7] > 0).all(), k  # padding untouched, content shifted up
        assert image[:7].mean() == pytest.approx(source.mean() + (0.08, 0.02)[k], abs=0.01), k


# ----------------------------------------------------------------------------- restore


def test_restore_gives_the_batch_that_would_have_come(data, tok):
    """States taken after every batch (some in the middle of a study's sequences) restore exactly."""
    cfg = _config(data, packing=True, context="off", augment=AugmentConfig(), length_buckets=(64, 128))
    iterator = build_train_iterator(cfg, tok)
    states, batches = [], []
    for _ in range(8):
        states.append(json.loads(json.dumps(iterator.get_state())))
        batches.append(_take(iterator, 1)[0])
    assert any(s["skip_sequences"] > 0 for s in states)
    stats_after = iterator.stats
    for k in (0, 3, 5):
        restored = build_train_iterator(cfg, tok)
        restored.set_state(states[k])
        _assert_same_batches(_take(restored, 8 - k), batches[k:])
        assert restored.stats == stats_after


# ----------------------------------------------------------------------------- sources


def test_tfds_source_gives_the_same_rows_as_json(data, tok):
    tfds_source = TfdsStudySource(data["tfds"], "train")
    assert len(tfds_source) == len(STUDIES)
    assert sorted(tfds_source[i].study.key for i in range(len(STUDIES))) == sorted(BY_ID)
    from_json = _drain(build_eval_iterator(_config(data, global_batch_size=1), tok))
    from_tfds = _drain(build_eval_iterator(_config(data, global_batch_size=1, source=data["tfds"], source_kind="tfds"), tok))
    json_rows = {ids[0][0]: b for b, ids in from_json}
    tfds_rows = {ids[0][0]: b for b, ids in from_tfds}
    assert sorted(tfds_rows) == sorted(json_rows)
    for study_id, batch in tfds_rows.items():
        _assert_same_batches([(batch, ())], [(json_rows[study_id], ())])


def test_source_errors_name_the_problem(data, tok, tmp_path):
    with pytest.raises(ValueError, match="no split 'test'"):
        TfdsStudySource(data["tfds"], "test")
    with pytest.raises(FileNotFoundError, match="no built cxrtrek"):
        TfdsStudySource(tmp_path, "train")
    cfg = _config(data, image_root=str(tmp_path))  # images are not there
    with pytest.raises(ImageLoadError, match="p0/s0/a.png"):
        next(build_eval_iterator(cfg, tok))


# ----------------------------------------------------------------------------- workers


def test_two_workers_give_the_same_batches_and_restore(data, tok):
    """Batches do not depend on the worker count, and a state taken with workers restores exactly
    (about 10 s: two rounds of worker start-up)."""
    cfg = _config(data, packing=True, context="off", augment=AugmentConfig(), num_epochs=2, length_buckets=(64, 128))
    single = _drain(build_train_iterator(cfg, tok))
    workers = dataclasses.replace(cfg, num_workers=2)
    iterator = build_train_iterator(workers, tok)
    head = _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    tail = _drain(iterator)
    _assert_same_batches(head + tail, single)
    iterator.set_state(state)  # rewind the live iterator: its workers restart from the state
    _assert_same_batches(_drain(iterator), tail)
    iterator.close()
