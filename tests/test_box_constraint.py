"""Box answers that always parse: detection turns decoded under the box grammar
(`data_pipeline.text.box_grammar`) on random weights give answers `parse_boxes` reads (1,000
sampled answers), released-format answers pass the grammar unchanged, and turns that are not
detection decode exactly as without it."""

import jax
import numpy as np
import pytest
from flax import nnx

from cxrtrek_jax.decoding import (
    ChainStudy,
    DecodeSpec,
    SamplingConfig,
    StepwiseDecoder,
    fixed_plan,
    run_chain,
    study_turns,
)
from cxrtrek_jax.model import CXRTrekNet, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.schema.boxes import parse_boxes
from data_pipeline.text.box_grammar import BoxGrammar, allowed_tokens, is_box_turn, replay
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

ANSWER = 64  # answer capacity (tokens, end-of-turn included)
CACHE = 512
SYSTEM = "You read chest X-rays."
RELEASED = "<|ref|> right apical zone <|/ref|> <|box|>(19.2, 12.5), (43.3, 30.8)<|/box|>"  # the authors' sample


@pytest.fixture(scope="module")
def world():
    """Phantom studies, a tokenizer trained on them, a tiny random model and two decoders over it:
    one with the box grammar, one without."""
    phantom = PhantomConfig(size=64, turns_per_study=(10, 14), prob_prior=0.0)
    pairs = [generate_study(5, index, phantom) for index in range(6)]
    tokenizer = train_tokenizer(training_texts([study for study, _ in pairs]), 500)
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 2})
    model = CXRTrekNet(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=CACHE, max_answer_tokens=ANSWER, max_turns=32)
    grammar = BoxGrammar.build(tokenizer, config.vocab_size)
    return dict(pairs=pairs, tokenizer=tokenizer, config=config, params=params, spec=spec, grammar=grammar,
                constrained=StepwiseDecoder(graphdef, config, spec, grammar=grammar),
                free=StepwiseDecoder(graphdef, config, spec))


def _detection_answers(world):
    return [item.answer for study, _ in world["pairs"] for item in study.items if is_box_turn(item.qtype)]


def _parses(text: str) -> bool:
    try:
        return bool(parse_boxes(text))
    except ValueError:
        return False


def _ask(world, decoder, flags, seed):
    """A fresh state for len(flags) rows, each asked one detection question (no images)."""
    tokenizer, config = world["tokenizer"], world["config"]
    rows = len(flags)
    prompt = tokenizer.encode_chat([{"role": "system", "content": SYSTEM}]).ids.tolist()
    question = tokenizer.encode_chat([{"role": "user", "content": "Locate the right pleural effusion."}],
                                     add_generation_prompt=True).ids[1:].tolist()
    images = np.zeros((rows, config.max_images, config.vision.image_size, config.vision.image_size), np.float32)
    state = decoder.start(world["params"], images, np.zeros(images.shape[:2], bool), [prompt] * rows,
                          jax.random.key(seed))
    return decoder.ask(world["params"], state, [question] * rows, [3] * rows, constrained=flags)


def test_a_thousand_sampled_detection_answers_all_parse_as_boxes(world):
    decoder, tokenizer, grammar = world["constrained"], world["tokenizer"], world["grammar"]
    rows, seeds = 200, 5
    budgets = np.random.default_rng(0).integers(grammar.min_tokens, ANSWER + 1, size=(seeds, rows)).astype(np.int32)
    answers, boxes = [], 0
    for seed in range(seeds):
        state = _ask(world, decoder, [True] * rows, seed)
        state, tokens = decoder.answer(world["params"], state, SamplingConfig(temperature=1.0), budgets[seed])
        tokens, counts, reasons = jax.device_get((tokens, state.num_tokens, state.stop_reason))
        assert (counts <= budgets[seed]).all()
        assert (reasons == 1).all()  # every answer closed itself (END_OF_TURN), none cut at its budget
        for b in range(rows):
            ids = tokens[b, : counts[b]].tolist()
            assert ids[-1] == tokenizer.end_of_turn_id
            text = tokenizer.decode(ids)
            answers.append(text)
            parsed = parse_boxes(text)  # raises BoxParseError on any malformed answer
            assert parsed, text
            boxes += len(parsed)
    assert len(answers) == 1000 and len(set(answers)) > 900  # random weights: answers differ
    assert boxes >= 1000


def test_released_and_phantom_answers_pass_the_grammar_unchanged(world):
    """Teacher-forced through the automaton, every token of a valid answer is one it allows (with the
    answer capacity as budget), and the answer ends where end-of-turn is allowed."""
    tokenizer, grammar = world["tokenizer"], world["grammar"]
    answers = _detection_answers(world) + [RELEASED]
    assert len(answers) > 8
    for text in answers:
        ids = tokenizer.encode_text(text) + [tokenizer.end_of_turn_id]
        for n, token in enumerate(ids):
            registers = replay(grammar, ids[:n])[None]
            allowed = allowed_tokens(grammar, registers, np.array([ANSWER - n]), np)
            assert allowed[0, token], (text, tokenizer.decode(ids[: n + 1]))
        assert grammar.state_names[replay(grammar, ids)[0]] == "end"


def test_the_grammar_keeps_the_second_point_below_right_of_the_first(world):
    """Hand-made prefixes: after x1 = 43.3, x2 may not start "2" nor end as "43.2"; it may be "43.3"."""
    tokenizer, grammar = world["tokenizer"], world["grammar"]

    def allowed_after(prefix: str, piece: str) -> bool:
        ids = tokenizer.encode_text(prefix)
        registers = replay(grammar, ids)[None]
        (token,) = tokenizer.encode_text(piece)
        return bool(allowed_tokens(grammar, registers, np.array([ANSWER]), np)[0, token])

    head = "<|ref|> heart <|/ref|> <|box|>(43.3, 12.5), ("
    assert not allowed_after(head, "2") and allowed_after(head, "5") and allowed_after(head, "1")
    assert not allowed_after(head + "43.", "2") and allowed_after(head + "43.", "3")
    assert not allowed_after(head + "43.3, 1", ".")  # y2 = 1.x < y1 = 12.5
    assert not allowed_after("<|ref|> heart <|/ref|> <|box|>(", "1") or allowed_after(
        "<|ref|> heart <|/ref|> <|box|>(10", "0")  # 100 is the largest integer part
    assert not allowed_after("<|ref|> heart <|/ref|> <|box|>(10", "1")  # 101 > 100


def test_turns_that_are_not_detection_decode_as_without_the_grammar(world):
    """Greedy answers of rows not marked constrained equal those of the decoder without a grammar,
    with a constrained row in the same batch; that row parses as boxes only with the grammar."""
    flags = [False, True, False, False]
    ours = _ask(world, world["constrained"], flags, 0)
    theirs = _ask(world, world["free"], flags, 0)
    ours, our_tokens = world["constrained"].answer(world["params"], ours, SamplingConfig(), 48)
    theirs, their_tokens = world["free"].answer(world["params"], theirs, SamplingConfig(), 48)
    (our_tokens, our_counts), (their_tokens, their_counts) = jax.device_get(
        ((our_tokens, ours.num_tokens), (their_tokens, theirs.num_tokens)))
    for b in (0, 2, 3):
        assert our_tokens[b].tolist() == their_tokens[b].tolist()
    decode = world["tokenizer"].decode
    assert parse_boxes(decode(our_tokens[1, : our_counts[1]]))
    assert not _parses(decode(their_tokens[1, : their_counts[1]]))  # the random model alone writes no boxes


@pytest.mark.slow
def test_chains_constrain_detection_turns_only(world):
    """run_chain (context none: turns independent): detection answers parse, every other answer is
    the one the decoder without a grammar gives."""
    config, tokenizer = world["config"], world["tokenizer"]
    studies = []
    for study, images in world["pairs"][:4]:
        pixels = np.stack([resize_with_pad(images[p], config.vision.image_size) for p in study.images])
        turns = study_turns(study)
        studies.append(ChainStudy(study.study_id, pixels, SYSTEM, lambda t=turns: fixed_plan(t)))
    ours, theirs = (run_chain(world[name], world["params"], tokenizer, studies, context="none", max_new_tokens=48)
                    for name in ("constrained", "free"))
    detections = 0
    for a_study, b_study in zip(ours, theirs):
        for a, b in zip(a_study, b_study):
            if is_box_turn(a.qtype):
                detections += 1
                assert parse_boxes(a.answer), a.answer
            else:
                assert a.answer_tokens == b.answer_tokens
    assert detections >= 2


def test_a_grammar_for_another_vocabulary_is_refused(world):
    small = BoxGrammar.build(world["tokenizer"])  # the tokenizer's 500 ids, the model has 512
    with pytest.raises(ValueError, match="box grammar covers"):
        StepwiseDecoder(world["constrained"].graphdef, world["config"], world["spec"], grammar=small)
