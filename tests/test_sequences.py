"""Staged training sequences: exact layouts, masks, stage ids, truncation and every ablation variant."""

import pickle

import numpy as np
import pytest

from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
from data_pipeline.schema.records import Message, QAItem, Study
from data_pipeline.text.sequences import (
    SequenceBuilder,
    SequenceConfig,
    SequenceStats,
    SequenceTooLongError,
    build_sequences,
    current_image_count,
    flip_answers,
    filter_turns,
    keeps_turn,
    system_prompt_of,
    turn_exclusion,
)
from data_pipeline.text.tokenizer import train_tokenizer

N = 3  # tokens per image


def _item(stage, count, question, answer):
    return QAItem(stage=stage, task_type="t", qtype="captioning", image_input_count=count, question=question, answer=answer)


# No prior; two current views; stage order interleaved (3 before 2), as the released data allows.
STUDY_A = Study(
    study_id="A",
    images=("front.png", "lat.png"),
    items=(
        _item(1, 2, "<image>\n<image>\nWhich view is this?", "PA view."),
        _item(3, 2, "Where is the effusion?", "Left base."),
        _item(2, 2, "Is there an effusion?", "Yes."),
        _item(8, 2, "Write the report.", "Small left effusion."),
    ),
)

# One current view, one prior view introduced lazily by the stage-5 turn.
STUDY_B = Study(
    study_id="B",
    ref_study_id="B-prior",
    images=("cur.png", "prior.png"),
    items=(
        _item(1, 1, "<image>\nIs this an AP view?", "Yes."),
        _item(2, 1, "Is there an effusion?", "No."),
        _item(5, 2, "<image>\nCompared with the prior, is it new?", "It is unchanged."),
        _item(8, 2, "Write the report.", "No effusion."),
    ),
)


@pytest.fixture(scope="module")
def tok():
    texts = [DEFAULT_SYSTEM_PROMPT] + [t for s in (STUDY_A, STUDY_B) for i in s.items for t in (i.question, i.answer)]
    return train_tokenizer(texts * 10, 500)


def _layout(tok, study, turns, questions=None):
    """Expected (ids, token stage, token loss) built piece by piece from the template layout."""
    enc = tok.encode_text
    img = [tok.image_id] * N
    pieces = [([tok.bos_id], 0, 0.0), ([*tok.prefix_ids("system"), *enc(DEFAULT_SYSTEM_PROMPT), tok.end_of_turn_id], 0, 0.0)]
    for k, t in enumerate(turns):
        item = study.items[t]
        question = item.question if questions is None else questions[k]
        q_ids = []
        for n, part in enumerate(question.split("<image>")):
            q_ids += (img if n else []) + (enc(part) if part else [])
        stage = item.stage
        pieces += [
            ([*tok.prefix_ids("user"), *q_ids, tok.end_of_turn_id, *tok.prefix_ids("assistant")], stage, 0.0),
            ([*enc(item.answer), tok.end_of_turn_id], stage, 1.0),
        ]
    ids = np.concatenate([np.asarray(p, np.int32) for p, _, _ in pieces])
    stage = np.concatenate([np.full(len(p), s, np.int32) for p, s, _ in pieces])
    loss = np.concatenate([np.full(len(p), m, np.float32) for p, _, m in pieces])
    return ids, stage, loss


def _check_layout(seq, ids, stage, loss):
    np.testing.assert_array_equal(seq.input_tokens, ids[:-1])
    np.testing.assert_array_equal(seq.target_tokens, ids[1:])
    np.testing.assert_array_equal(seq.stage_ids, stage[1:])
    np.testing.assert_array_equal(seq.loss_mask, loss[1:])
    np.testing.assert_array_equal(seq.positions, np.arange(len(ids) - 1))
    assert seq.input_tokens.dtype == np.int32 and seq.loss_mask.dtype == np.float32
    assert seq.stage_ids.dtype == np.int32 and seq.positions.dtype == np.int32


def test_stage_context_exact_layout_keeps_interleaved_order(tok):
    (seq,), stats = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    _check_layout(seq, *_layout(tok, STUDY_A, [0, 1, 2, 3]))
    assert seq.turn_indices == (0, 1, 2, 3) and seq.image_indices == (0, 1)
    assert int(np.sum(seq.input_tokens == tok.image_id)) == 2 * N
    assert stats == SequenceStats(studies=1, sequences=1, turns_in=4, turns_kept=4,
                                  stage_trained=(0, 1, 1, 1, 0, 0, 0, 0, 1))
    assert stats.per_stage() == {s: {"trained": 1, "windowed": 0, "dropped": 0} for s in (1, 2, 3, 8)}


def test_loss_covers_answers_and_their_end_of_turn_only(tok):
    (seq,), _ = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    scored = seq.target_tokens[seq.loss_mask == 1.0]
    assert tok.decode(scored, stop_at_end_of_turn=False) == "PA view.Left base.Yes.Small left effusion."
    assert int(np.sum(scored == tok.end_of_turn_id)) == 4
    assert not np.isin(scored, [tok.image_id, *tok.prefix_ids("assistant"), *tok.prefix_ids("user")]).any()
    for stage, answer in [(1, "PA view."), (3, "Left base."), (2, "Yes."), (8, "Small left effusion.")]:
        ids = seq.target_tokens[(seq.loss_mask == 1.0) & (seq.stage_ids == stage)]
        assert tok.decode(ids) == answer


def test_answer_weighting_gives_every_answer_weight_one_over_the_same_tokens(tok):
    config = SequenceConfig(max_length=512, tokens_per_image=N)
    (by_token,), _ = build_sequences(STUDY_A, tok, config)
    (by_answer,), _ = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N,
                                                                    loss_weighting="answer"))
    np.testing.assert_array_equal(by_answer.target_tokens, by_token.target_tokens)
    np.testing.assert_array_equal(by_answer.loss_mask > 0, by_token.loss_mask > 0)
    for stage, answer in [(1, "PA view."), (3, "Left base."), (2, "Yes."), (8, "Small left effusion.")]:
        weights = by_answer.loss_mask[by_answer.stage_ids == stage]
        weights = weights[weights > 0]
        # The answer's tokens plus its end-of-turn, each 1/n, summing to one answer.
        assert len(weights) == len(tok.encode_text(answer)) + 1
        np.testing.assert_allclose(weights, 1.0 / len(weights))
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_weighting must be one of .*'turn'"):
        SequenceConfig(loss_weighting="turn")


def test_sqrt_weighting_gives_an_answer_of_n_tokens_weight_sqrt_n(tok):
    (by_token,), _ = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    (by_sqrt,), _ = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N,
                                                                  loss_weighting="sqrt"))
    np.testing.assert_array_equal(by_sqrt.target_tokens, by_token.target_tokens)
    np.testing.assert_array_equal(by_sqrt.loss_mask > 0, by_token.loss_mask > 0)
    totals = {}
    for stage, answer in [(1, "PA view."), (2, "Yes."), (8, "Small left effusion.")]:
        weights = by_sqrt.loss_mask[by_sqrt.stage_ids == stage]
        weights = weights[weights > 0]
        n = len(tok.encode_text(answer)) + 1  # the answer's tokens plus its end-of-turn
        assert len(weights) == n
        np.testing.assert_allclose(weights, 1.0 / np.sqrt(n), rtol=1e-6)
        totals[stage] = weights.sum()
        np.testing.assert_allclose(totals[stage], np.sqrt(n), rtol=1e-6)
    # The report outweighs the yes/no answer, but by the square root of its length ratio only.
    assert totals[8] > totals[2]


def test_decisive_closed_answers_train_only_the_deciding_token(tok):
    study = Study(study_id="D", images=("front.png",), items=(
        QAItem(1, "View_Information", "single-choice", 1, "<image>\nView? A. PA B. AP", "B. AP"),
        QAItem(2, "Findings_Identification", "yes_no", 1, "Is there an effusion?", "Yes. Left base."),
        _item(8, 1, "Write the report.", "Small left effusion."),
    ))
    (full,), _ = build_sequences(study, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    (cut,), _ = build_sequences(study, tok, SequenceConfig(max_length=512, tokens_per_image=N,
                                                           closed_answers="decisive"))
    trained = {f"{name}{stage}": tok.decode(seq.target_tokens[(seq.loss_mask > 0) & (seq.stage_ids == stage)])
               for name, seq in (("full", full), ("cut", cut)) for stage in (1, 2, 8)}
    assert trained == {"full1": "B. AP", "full2": "Yes. Left base.", "full8": "Small left effusion.",
                       "cut1": "B.", "cut2": "Yes.", "cut8": "Small left effusion."}
    (stage_2,), _ = build_sequences(study, tok, SequenceConfig(max_length=512, tokens_per_image=N,
                                                               closed_answers="decisive", decisive_stages=("2",)))
    assert [tok.decode(stage_2.target_tokens[(stage_2.loss_mask > 0) & (stage_2.stage_ids == stage)])
            for stage in (1, 2, 8)] == ["B. AP", "Yes.", "Small left effusion."]
    with pytest.raises(ValueError, match="closed_answers must be one of .*'short'"):
        SequenceConfig(closed_answers="short")
    with pytest.raises(ValueError, match="decisive_stages .* needs closed_answers 'decisive'"):
        SequenceConfig(decisive_stages=(2,))
    with pytest.raises(ValueError, match="decisive_stages must name at least one stage"):
        SequenceConfig(closed_answers="decisive", decisive_stages=())


FLIP_STUDY = Study(study_id="F", images=("front.png",), items=(
    QAItem(1, "View_Information", "yes_no", 1, "<image>\nIs this an AP view?", "Yes."),
    QAItem(2, "Findings_Identification", "yes_no", 1, "Is there an effusion?", "Yes. Left base."),
    QAItem(2, "Findings_Identification", "yes_no", 1, "Is there a pneumothorax?", "No."),
    _item(2, 1, "Is there an effusion?", "Yes."),  # not a yes/no turn: never flips
    _item(8, 1, "Write the report.", "Small left effusion."),
))


class _Draws:
    """A stand-in rng whose uniform draws are given (and counted)."""

    def __init__(self, *values):
        self.values, self.drawn = list(values), 0

    def random(self):
        self.drawn += 1
        return self.values.pop(0)


def test_flip_answers_flips_bare_yes_no_answers_with_their_draws():
    draws = _Draws(0.1, 0.9)  # turn 0 flips (0.1 < 0.5), turn 2 does not
    flipped_study, flipped = flip_answers(FLIP_STUDY, range(5), 0.5, draws)
    assert flipped == {0} and draws.drawn == 2  # "Yes. Left base." and the captioning turn draw nothing
    assert [i.answer for i in flipped_study.items] == ["No.", "Yes. Left base.", "No.", "Yes.", "Small left effusion."]
    draws = _Draws(0.3, 0.3)
    assert flip_answers(FLIP_STUDY, [2], 0.5, draws)[0].items[2].answer == "Yes." and draws.drawn == 1
    assert flip_answers(FLIP_STUDY, range(5), 0.5, _Draws(0.6, 0.6)) == (FLIP_STUDY, frozenset())


def test_flipped_answers_are_context_without_loss_and_only_in_training(tok):
    config = SequenceConfig(max_length=512, tokens_per_image=N, closed_answers="decisive", answer_flips=0.5)
    (clean,), _ = build_sequences(FLIP_STUDY, tok, config)  # no rng: as the data says
    (flip,), stats = build_sequences(FLIP_STUDY, tok, config, _Draws(0.9, 0.1, 0.9))
    # decisive cut first ("Yes. Left base." -> "Yes."), then the three bare answers draw: turn 1 flips
    expected = Study(study_id="F", images=("front.png",), items=(
        FLIP_STUDY.items[0], QAItem(2, "Findings_Identification", "yes_no", 1, "Is there an effusion?", "No."),
        *FLIP_STUDY.items[2:]))
    ids, stage, loss = _layout(tok, expected, [0, 1, 2, 3, 4])
    turn_1 = np.zeros_like(loss)
    answer_1 = [*tok.encode_text("No."), tok.end_of_turn_id]
    # the flipped answer's tokens (and its end-of-turn) are in the text but carry no loss
    start = next(k for k in range(len(ids)) if list(ids[k:k + len(answer_1)]) == answer_1 and loss[k] == 1.0)
    turn_1[start:start + len(answer_1)] = 1.0
    _check_layout(flip, ids, stage, loss - turn_1)
    assert stats.turns_flipped == 1 and stats.turns_kept == 5
    trained = tok.decode(clean.target_tokens[(clean.loss_mask > 0) & (clean.stage_ids == 2)], stop_at_end_of_turn=False)
    assert trained.startswith("Yes.") and stats.turns_dropped == 0
    with pytest.raises(ValueError, match=r"answer_flips must be in \[0, 1\), got 1.0"):
        SequenceConfig(answer_flips=1.0)


def test_lazy_prior_image_goes_into_the_comparison_question(tok):
    (seq,), _ = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    _check_layout(seq, *_layout(tok, STUDY_B, [0, 1, 2, 3]))
    assert seq.image_indices == (0, 1)


def _input_length(tok, study, turns, questions=None):
    return len(_layout(tok, study, turns, questions)[0]) - 1


def test_truncation_drops_whole_trailing_turns_and_their_images(tok):
    through_two = _input_length(tok, STUDY_B, [0, 1])
    for max_length, kept in [(through_two, 2), (through_two + 5, 2), (through_two - 1, 1)]:
        config = SequenceConfig(max_length=max_length, tokens_per_image=N, long_chains="truncate")
        (seq,), stats = build_sequences(STUDY_B, tok, config)
        assert seq.turn_indices == tuple(range(kept))
        _check_layout(seq, *_layout(tok, STUDY_B, range(kept)))
        assert len(seq) <= max_length
        assert stats.turns_dropped_truncation == 4 - kept and stats.turns_kept == kept
        assert seq.image_indices == (0,) and stats.images_dropped == 1  # the prior came with turn 2
        assert stats.stage_dropped[8] == 1 and stats.stage_trained[8] == 0  # the report is lost


def _window_questions(study, turns):
    """The questions of a window over `turns`, images placed as a window places them (every image
    its first turn needs, one per line in front; later new images in their own question)."""
    questions, shown = [], 0
    for t in turns:
        item = study.items[t]
        new = max(0, item.image_input_count - shown)
        q = item.question
        if q.count("<image>") != new:
            q = "<image>\n" * new + q.replace("<image>\n", "").replace("<image>", "")
        questions.append(q)
        shown += new
    return questions


@pytest.mark.parametrize("extra", [0, 4, 9])
def test_windows_train_every_turn_once_with_its_images_and_the_newest_context(tok, extra):
    """A chain longer than max_length becomes windows: each turn trained (loss) in exactly one
    window, each window within max_length, its earlier turns (no loss) the newest ones that fit,
    its layout the template's with the images in front. Checked against a layout built here."""
    max_length = _input_length(tok, STUDY_B, [0, 1]) + extra
    seqs, stats = build_sequences(STUDY_B, tok, SequenceConfig(max_length=max_length, tokens_per_image=N))
    assert len(seqs) > 1
    trained = [t for s in seqs for t in s.trained_turns]
    assert sorted(trained) == [0, 1, 2, 3]  # every turn once
    for seq in seqs:
        turns = list(seq.turn_indices)
        ids, stage, loss = _layout(tok, STUDY_B, turns, _window_questions(STUDY_B, turns))
        context_end = _input_length(tok, STUDY_B, turns[: seq.context_turns], _window_questions(
            STUDY_B, turns[: seq.context_turns])) if seq.context_turns else None
        if context_end is not None:
            loss[: context_end + 1] = 0.0  # the context's answers carry no loss
        _check_layout(seq, ids, stage, loss)
        assert len(seq) <= max_length
        first = turns[0]
        if first > 0:  # the newest context that fits: one more earlier turn would not
            wider = [first - 1] + turns
            assert _input_length(tok, STUDY_B, wider, _window_questions(STUDY_B, wider)) > max_length
        assert turns == list(range(turns[0], turns[-1] + 1))  # contiguous, chain order
        assert seq.image_indices == tuple(range(max(STUDY_B.items[t].image_input_count for t in turns)))
    windowed = {t for s in seqs if s.turn_indices[0] > 0 for t in s.trained_turns}
    assert stats.turns_kept == 4 and stats.turns_dropped_truncation == 0 and stats.images_dropped == 0
    assert stats.turns_windowed == len(windowed) > 0
    assert stats.stage_trained == (0, 1, 1, 0, 0, 1, 0, 0, 1)
    assert stats.stage_windowed[8] == (3 in windowed) and sum(stats.stage_dropped) == 0


def test_a_chain_that_fits_is_one_sequence_either_way(tok):
    window, _ = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    truncate, _ = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N,
                                                               long_chains="truncate"))
    assert len(window) == len(truncate) == 1
    np.testing.assert_array_equal(window[0].input_tokens, truncate[0].input_tokens)
    np.testing.assert_array_equal(window[0].loss_mask, truncate[0].loss_mask)
    with pytest.raises(ValueError, match="long_chains"):
        SequenceConfig(max_length=512, tokens_per_image=N, long_chains="slide")


def test_first_turn_too_long_is_an_error_or_counted(tok):
    too_short = _input_length(tok, STUDY_B, [0]) - 1
    for long_chains in ("truncate", "window"):
        with pytest.raises(SequenceTooLongError, match=r"study 'B': turn \(item 0\) needs"):
            build_sequences(STUDY_B, tok, SequenceConfig(max_length=too_short, tokens_per_image=N,
                                                         long_chains=long_chains))
    seqs, stats = build_sequences(
        STUDY_B, tok, SequenceConfig(max_length=too_short, tokens_per_image=N, drop_unfittable=True,
                                     long_chains="truncate")
    )
    assert seqs == [] and stats.unfittable == 1
    assert stats.turns_dropped_truncation == 4 and stats.images_dropped == 2


def test_windows_drop_only_the_turns_that_do_not_fit_alone(tok):
    """Turn 2 needs both images; with room for one turn and one image only it cannot fit alone."""
    limit = _input_length(tok, STUDY_B, [2], _window_questions(STUDY_B, [2])) - 1
    assert limit >= _input_length(tok, STUDY_B, [0])
    seqs, stats = build_sequences(STUDY_B, tok, SequenceConfig(max_length=limit, tokens_per_image=N,
                                                               drop_unfittable=True))
    assert sorted(t for s in seqs for t in s.trained_turns) == [0, 1] + ([3] if stats.stage_trained[8] else [])
    assert 2 not in [t for s in seqs for t in s.turn_indices]
    assert stats.stage_dropped[5] == 1 and stats.unfittable >= 1
    assert stats.turns_in == stats.turns_kept + stats.turns_dropped_truncation


def test_stage_context_off_one_sequence_per_turn_with_its_visible_images(tok):
    seqs, stats = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N, context="off"))
    expected_questions = [
        "<image>\nIs this an AP view?",
        "<image>\nIs there an effusion?",
        "<image>\n<image>\nCompared with the prior, is it new?",
        "<image>\n<image>\nWrite the report.",
    ]
    assert [s.turn_indices for s in seqs] == [(0,), (1,), (2,), (3,)]
    assert [s.image_indices for s in seqs] == [(0,), (0,), (0, 1), (0, 1)]
    for t, seq in enumerate(seqs):
        _check_layout(seq, *_layout(tok, STUDY_B, [t], [expected_questions[t]]))
    assert stats.sequences == 4 and stats.turns_kept == 4 and stats.images_dropped == 0


def test_stage_context_off_drops_only_the_turn_that_does_not_fit(tok):
    limit = _input_length(tok, STUDY_B, [2], ["<image>\n<image>\nCompared with the prior, is it new?"]) - 1
    config = SequenceConfig(max_length=limit, tokens_per_image=N, context="off", drop_unfittable=True)
    seqs, stats = build_sequences(STUDY_B, tok, config)
    assert [s.turn_indices for s in seqs] == [(0,), (1,), (3,)]
    assert stats.unfittable == 1 and stats.turns_dropped_truncation == 1 and stats.turns_kept == 3


def test_no_prior_drops_prior_images_and_the_turns_needing_them(tok):
    (seq,), stats = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N, no_prior=True))
    _check_layout(seq, *_layout(tok, STUDY_B, [0, 1]))
    assert seq.image_indices == (0,)
    assert stats.turns_dropped_no_prior == 2 and stats.images_dropped == 1 and stats.turns_kept == 2
    assert stats.turns_dropped == 2
    # Turns left out by the stage selection are not dropped ones: of STUDY_B's stages 1, 2, 5, 8,
    # keeping 2, 5, 8 excludes the stage-1 turn, and no_prior drops the two that need the prior.
    _, selected = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N, no_prior=True,
                                                               stages=(2, 5, 8)))
    assert (selected.turns_excluded_by_stage, selected.turns_dropped, selected.turns_kept) == (1, 2, 1)
    # a study without a prior loses nothing
    (seq_a,), stats_a = build_sequences(STUDY_A, tok, SequenceConfig(max_length=512, tokens_per_image=N, no_prior=True))
    assert seq_a.turn_indices == (0, 1, 2, 3) and stats_a.turns_dropped_no_prior == 0


def test_image_limit_drops_the_turns_needing_more_images_than_the_model_has(tok):
    config = SequenceConfig(max_length=512, tokens_per_image=N, max_images=1)
    (seq,), stats = build_sequences(STUDY_B, tok, config)
    _check_layout(seq, *_layout(tok, STUDY_B, [0, 1]))
    assert seq.image_indices == (0,)
    assert stats.turns_dropped_image_limit == 2 and stats.images_dropped == 1 and stats.turns_kept == 2
    assert stats.turns_in == stats.turns_kept + stats.turns_dropped_image_limit
    (_,), stats_2 = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N, max_images=2))
    assert stats_2.turns_dropped_image_limit == 0
    with pytest.raises(ValueError, match="max_images"):
        SequenceConfig(max_length=512, tokens_per_image=N, max_images=0)


def test_stage_subset_moves_placeholders_to_the_first_kept_turn(tok):
    config = SequenceConfig(max_length=512, tokens_per_image=N, stages=(5, 2))
    assert config.stages == (2, 5)
    (seq,), stats = build_sequences(STUDY_B, tok, config)
    questions = ["<image>\nIs there an effusion?", "<image>\nCompared with the prior, is it new?"]
    _check_layout(seq, *_layout(tok, STUDY_B, [1, 2], questions))
    assert stats.turns_excluded_by_stage == 2 and stats.turns_kept == 2
    seqs, stats = build_sequences(STUDY_B, tok, SequenceConfig(max_length=512, tokens_per_image=N, stages=(6,)))
    assert seqs == [] and stats.turns_excluded_by_stage == 4 and stats.images_dropped == 2


def test_turn_filter_names_why_a_turn_is_left_out():
    # STUDY_B: turns of stages 1, 2 (one image), 5, 8 (two: the prior came in at stage 5).
    reasons = [turn_exclusion(item, (2, 8), True, current_image_count(STUDY_B)) for item in STUDY_B.items]
    assert reasons == ["stage", None, "stage", "no_prior"]
    assert [keeps_turn(STUDY_B, item, None, True) for item in STUDY_B.items] == [True, True, False, False]
    assert all(keeps_turn(STUDY_A, item, None, True) for item in STUDY_A.items)  # no prior: nothing needs one


@pytest.mark.parametrize("stages, no_prior", [(None, False), ((8,), False), (None, True), ((1, 5, 8), True)])
def test_filter_turns_keeps_what_build_sequences_trains(tok, stages, no_prior):
    """The study an experiment evaluates (`filter_turns`) holds exactly the turns it trains on."""
    study = STUDY_B.replace(messages=(Message("system", "Read."),))
    config = SequenceConfig(max_length=512, tokens_per_image=N, stages=stages, no_prior=no_prior)
    sequences, _ = build_sequences(study, tok, config)
    trained = [study.items[t] for s in sequences for t in s.trained_turns]
    filtered = filter_turns(study, stages, no_prior)
    assert list(filtered.items) == trained
    assert filtered.messages[0] == Message("system", "Read.")  # the study's own prompt, kept
    assert [m.content for m in filtered.messages[1:]] == [t for i in trained for t in (i.question, i.answer)]
    assert filter_turns(STUDY_B, stages, no_prior).messages is None


def test_shuffled_stage_order_is_seeded_and_reintroduces_images(tok):
    study = STUDY_B.replace(items=STUDY_B.items + (_item(2, 2, "Any pneumothorax?", "No."),))
    orders = {}
    for seed in range(12):
        config = SequenceConfig(max_length=1024, tokens_per_image=N, context="shuffled", shuffle_seed=seed)
        (seq,), _ = build_sequences(study, tok, config)
        again, _ = build_sequences(study, tok, config)
        np.testing.assert_array_equal(again[0].input_tokens, seq.input_tokens)
        turns = seq.turn_indices
        stages = [study.items[t].stage for t in turns]
        assert sorted(turns) == [0, 1, 2, 3, 4]
        assert stages == sorted(stages, key=stages.index)  # each stage's turns are contiguous
        assert turns.index(1) < turns.index(4)  # turns within a stage keep their order
        # images: introduced by the first turn needing them, in the layout below
        shown, questions = 0, []
        for t in turns:
            item = study.items[t]
            new = max(0, item.image_input_count - shown)
            text = item.question.replace("<image>\n", "")
            questions.append("<image>\n" * new + text)
            shown += new
        _check_layout(seq, *_layout(tok, study, turns, questions))
        orders[seed] = tuple(stages)
    assert len(set(orders.values())) > 3
    # the permutation also depends on the study id
    config = SequenceConfig(max_length=1024, tokens_per_image=N, context="shuffled", shuffle_seed=0)
    other = [build_sequences(study.replace(study_id=f"X{i}"), tok, config)[0][0].turn_indices for i in range(8)]
    assert len(set(other)) > 1


def test_original_placeholders_kept_verbatim_when_consistent(tok):
    study = STUDY_A.replace(items=(_item(1, 2, "Frontal <image> and lateral <image> views: which is PA?", "Frontal."),))
    (seq,), _ = build_sequences(study, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    _check_layout(seq, *_layout(tok, study, [0]))


def test_system_prompt_choice(tok):
    own = STUDY_A.replace(messages=(Message("system", "Own prompt."),))
    assert system_prompt_of(own) == "Own prompt."
    assert system_prompt_of(own, "Override.") == "Override."
    assert system_prompt_of(STUDY_A) == DEFAULT_SYSTEM_PROMPT
    (seq,), _ = build_sequences(own, tok, SequenceConfig(max_length=512, tokens_per_image=N))
    start = 1 + len(tok.prefix_ids("system"))
    assert tok.decode(seq.input_tokens[start:]) == "Own prompt."


def test_current_image_count():
    assert current_image_count(STUDY_A) == 2
    assert current_image_count(STUDY_B) == 1
    lazy_lateral = STUDY_B.replace(
        images=("front.png", "lat.png", "prior.png"),
        items=(
            _item(1, 1, "<image>\nView?", "PA."),
            _item(3, 2, "<image>\nOn the lateral?", "Yes."),
            _item(5, 3, "<image>\nCompared?", "New."),
        ),
    )
    assert current_image_count(lazy_lateral) == 2


def test_bad_image_input_count_names_study_and_turn(tok):
    bad = STUDY_A.replace(items=STUDY_A.items[:1] + (_item(2, 3, "Q?", "A."),))
    with pytest.raises(ValueError, match=r"study 'A' turn 1: image_input_count 3 outside 0..2"):
        build_sequences(bad, tok, SequenceConfig(max_length=512, tokens_per_image=N))


def test_config_validation():
    with pytest.raises(ValueError, match="tokens_per_image"):
        SequenceConfig(max_length=10, tokens_per_image=0)
    with pytest.raises(ValueError, match="max_length"):
        SequenceConfig(max_length=1, tokens_per_image=1)
    with pytest.raises(ValueError, match="stage must be in 1..8"):
        SequenceConfig(max_length=10, tokens_per_image=1, stages=(9,))
    with pytest.raises(ValueError, match="at least one stage"):
        SequenceConfig(max_length=10, tokens_per_image=1, stages=())


def test_stats_add_up_and_builder_pickles(tok):
    builder = pickle.loads(pickle.dumps(SequenceBuilder(tok, SequenceConfig(max_length=512, tokens_per_image=N, no_prior=True))))
    total = SequenceStats()
    for study in (STUDY_A, STUDY_B):
        seqs, stats = builder(study)
        total = total + stats
    assert total.studies == 2 and total.sequences == 2 and total.turns_in == 8
    assert total.turns_in == (
        total.turns_kept + total.turns_excluded_by_stage + total.turns_dropped_no_prior + total.turns_dropped_truncation
    )
