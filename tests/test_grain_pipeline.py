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
from data_pipeline.batches.augment import (
    AugmentConfig,
    adjust_intensity,
    crop_image,
    sample_crop,
    sample_intensity,
    study_box_extent,
)
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
from data_pipeline.files.images import ImageLoadError, load_image, resize_with_pad, resize_with_pad_params
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
    """Training batches carry cropped, intensity-changed images and the s0 box answer rewritten with them."""
    cfg = _config(data, augment=AugmentConfig(crop_area=(0.5, 0.6), brightness=0.1, contrast=0.2), num_epochs=3)
    plain = {ids[0][0]: b for b, ids in _drain(build_eval_iterator(_config(data, global_batch_size=1), tok))}
    changed_images = changed_answers = 0
    for batch, row_ids in _drain(build_train_iterator(cfg, tok)):
        for r, ids in enumerate(row_ids):
            if not ids:
                continue
            changed_images += not np.array_equal(batch["images"][r], plain[ids[0]]["images"][0])
            assert 0.0 <= batch["images"][r].min() and batch["images"][r].max() <= 1.0
            if ids[0] == "p0/s0":
                scored = (batch["stage_ids"][r] == 3) & (batch["loss_mask"][r] > 0)
                text = tok.decode(batch["target_tokens"][r][scored].tolist())
                changed_answers += "(55.0, 60.0)" not in text
                assert "<|box|>" in text and "left effusion" in text
    assert changed_images > 0 and changed_answers > 0


def test_prepare_study_crops_image_and_box_with_one_window(data, tok):
    """PrepareStudy = the documented draws: crop window (widened to the boxes, snapped to image 0),
    then one intensity change per image; the box answer is the source box mapped into the window."""
    source = JsonStudySource(data["json"], data["image_root"])
    config = AugmentConfig(crop_area=(0.3, 0.4), brightness=0.1, contrast=0.2)
    prepare = PrepareStudy(tok, _config(data).sequence_config(), SIZE, config)
    study = STUDIES[0]
    image = load_image(f"{data['image_root']}/{study.images[0]}")
    (source_box,) = parse_boxes(BOX)
    for seed in range(5):
        prepared = prepare(source[0], np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        window = sample_crop(rng, config, study_box_extent(study)).snapped(*image.shape)
        change = sample_intensity(rng, config)
        cropped = crop_image(image, window)
        p = resize_with_pad_params(cropped.shape, SIZE)
        content = (slice(p.offset_y, p.offset_y + p.content_h), slice(p.offset_x, p.offset_x + p.content_w))
        expected = adjust_intensity(resize_with_pad(cropped, SIZE), change, content)
        assert set(prepared.images) == {0}
        np.testing.assert_array_equal(prepared.images[0], expected)
        (seq,) = prepared.sequences
        answer = tok.decode(seq.target_tokens[(seq.stage_ids == 3) & (seq.loss_mask > 0)].tolist())
        (box,) = parse_boxes(answer)
        mapped = window.map_box(source_box)
        assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((mapped.x1, mapped.y1, mapped.x2, mapped.y2), abs=0.051)
        assert box.x2 - box.x1 > 0 and box.y2 - box.y1 > 0


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
