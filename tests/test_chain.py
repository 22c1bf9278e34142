"""The staged chain: equal to the no-cache reference in every context mode, equal to the
exported PyTorch LLaVA's greedy decoding, the adaptive question script, and its errors."""

import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlavaForConditionalGeneration

from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.decoding import (
    ChainStudy,
    DecodeSpec,
    ReferenceDecoder,
    StepwiseDecoder,
    Turn,
    default_script,
    fixed_plan,
    run_chain,
    says_yes,
    study_turns,
)
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, prediction_from_turn
from cxrtrek_jax.model import CXRTrekNet, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.schema.records import IMAGE_PLACEHOLDER
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

BUDGET = 8
CACHE = 512


@pytest.fixture(scope="module")
def world():
    """Three phantom studies with a prior image each, a tokenizer, a tiny model whose
    end-of-turn logit is scaled up (so answers end at different lengths) and a decoder."""
    phantom = PhantomConfig(size=64, turns_per_study=(4, 6), prob_prior=1.0)
    pairs = [generate_study(3, index, phantom) for index in range(3)]
    tokenizer = train_tokenizer(training_texts([study for study, _ in pairs]), 500)
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4})
    model = CXRTrekNet(config, rngs=nnx.Rngs(0))
    kernel = model.text.lm_head.kernel
    kernel[...] = kernel[...].at[:, tokenizer.end_of_turn_id].multiply(3.0)
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=CACHE, max_answer_tokens=BUDGET, max_turns=16)
    graphdef, params = nnx.split(model)
    decoder = StepwiseDecoder(graphdef, config, spec)
    studies = []
    for (study, images), keep in zip(pairs, (5, 3, 4)):
        turns = study_turns(study)
        chosen = turns[:keep] + tuple(t for t in turns if t.stage == 5)[:1]  # the prior enters mid-chain
        pixels = np.stack([resize_with_pad(images[path], config.vision.image_size) for path in study.images])
        studies.append(ChainStudy(study.study_id, pixels, "You read chest X-rays.",
                                  lambda chosen=chosen: fixed_plan(chosen)))
    return dict(tokenizer=tokenizer, config=config, model=model, spec=spec, params=params, decoder=decoder,
                studies=studies)


@pytest.mark.parametrize("context", ["own", "teacher", "none"])
def test_chain_matches_no_cache_reference(world, context):
    results = run_chain(world["decoder"], world["params"], world["tokenizer"], world["studies"], context=context,
                        max_new_tokens=BUDGET)
    reference = ReferenceDecoder(world["model"], world["tokenizer"], world["spec"])
    lengths = set()
    for study, ours in zip(world["studies"], results):
        theirs = reference.run(study, context=context, max_new_tokens=BUDGET)
        assert [r.turn_index for r in ours] == [r.turn_index for r in theirs]
        for a, b in zip(ours, theirs):
            assert a.answer_tokens == b.answer_tokens, (study.study_id, a.turn_index)
            assert a.stop_reason == b.stop_reason
            assert a.context == context
            lengths.add(len(a.answer_tokens))
    assert {len(r) for r in results} == {6, 4, 5}
    assert len(lengths) > 2  # answers of different lengths decoded together


def test_teacher_and_own_contexts_differ_after_the_first_turn(world):
    own, teacher = (run_chain(world["decoder"], world["params"], world["tokenizer"], world["studies"],
                              context=c, max_new_tokens=BUDGET) for c in ("own", "teacher"))
    assert all(a[0].answer_tokens == b[0].answer_tokens for a, b in zip(own, teacher))
    assert any(x.answer_tokens != y.answer_tokens for a, b in zip(own, teacher) for x, y in zip(a[1:], b[1:]))


def test_results_are_prediction_records(world):
    result = run_chain(world["decoder"], world["params"], world["tokenizer"], world["studies"],
                       context="teacher", max_new_tokens=BUDGET)[1][0]
    record = prediction_from_turn(result)
    assert PredictionRecord.from_json(record.to_json()) == record
    assert record.reference == result.reference and record.prediction == result.answer
    assert record.num_generated_tokens == len(result.answer_tokens) + (result.stop_reason != "cache_full")
    assert record.latency_s > 0


def test_jax_chain_matches_exported_pytorch_llava(world, tmp_path):
    tokenizer, config, model = world["tokenizer"], world["config"], world["model"]
    hf_conversion.save_hf_checkpoint(nnx.state(model, nnx.Param), config, str(tmp_path), bos_token_id=tokenizer.bos_id,
                                     eos_token_id=tokenizer.end_of_turn_id, pad_token_id=tokenizer.pad_id)
    torch_model = LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    studies = []
    for study in world["studies"]:  # the first image only, introduced in front of the first question
        turns = [Turn(t.turn_index, t.stage, t.task_type, t.qtype, t.question.replace(IMAGE_PLACEHOLDER, ""), 1,
                      t.reference) for t in study.plan() if t.stage < 5]
        studies.append(ChainStudy(study.study_id, study.images[:1], study.system_prompt,
                                  lambda turns=turns: fixed_plan(turns)))
    ours = run_chain(world["decoder"], world["params"], tokenizer, studies, context="own", max_new_tokens=BUDGET)
    suppress = [tokenizer.image_id, tokenizer.bos_id, tokenizer.pad_id, *range(tokenizer.vocab_size, config.vocab_size)]
    for study, results in zip(studies, ours):
        pixels = torch.tensor(np.repeat(study.images[:1, None], 3, axis=1) * 2.0 - 1.0)
        ids = tokenizer.encode_chat([{"role": "system", "content": study.system_prompt}]).ids.tolist()
        for k, (turn, result) in enumerate(zip(study.plan(), results, strict=True)):
            question = (IMAGE_PLACEHOLDER + "\n" if k == 0 else "") + turn.question
            ids += tokenizer.encode_chat([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokens_per_image=config.tokens_per_image).ids[1:].tolist()
            with torch.no_grad():
                out = torch_model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, do_sample=False,
                                           max_new_tokens=BUDGET - 1, eos_token_id=tokenizer.end_of_turn_id,
                                           pad_token_id=tokenizer.pad_id, suppress_tokens=suppress)
            generated = out[0, len(ids):].tolist()
            if generated[-1:] != [tokenizer.end_of_turn_id]:
                generated.append(tokenizer.end_of_turn_id)  # the chain closes a turn that ran out of budget
            assert list(result.answer_tokens) == generated[:-1], (study.study_id, turn.turn_index)
            ids += generated


def test_canonical_order_sorts_by_stage_stably(world):
    study, _ = generate_study(0, 1, PhantomConfig(size=64, turn_order="by_finding", prob_prior=1.0))
    given = study_turns(study, "given")
    canonical = study_turns(study, "canonical")
    assert [t.stage for t in canonical] == sorted(t.stage for t in given)
    for stage in range(1, 9):
        assert [t for t in canonical if t.stage == stage] == [t for t in given if t.stage == stage]
    with pytest.raises(ValueError, match="unknown turn order"):
        study_turns(study, "random")


def _walk(plan, answers):
    """Drive a plan, answering each question by `answers(turn)`; returns the turns asked."""
    turns = [next(plan)]
    while True:
        try:
            turns.append(plan.send(answers(turns[-1])))
        except StopIteration:
            return turns


def test_question_script_follows_the_answers():
    effusion_only = _walk(default_script(current_images=2, prior_images=1),
                          lambda t: "Yes, there is." if "pleural effusion" in t.question and t.stage == 2 else "No.")
    stages = [t.stage for t in effusion_only]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3, 4, 5, 7, 8}
    stage3 = [t for t in effusion_only if t.stage == 3]
    assert [t.qtype for t in stage3] == ["captioning", "detection"]
    assert all("pleural effusion" in t.question for t in stage3)
    assert effusion_only[0].question.count(IMAGE_PLACEHOLDER) == 2 and effusion_only[0].image_input_count == 2
    comparison = [t for t in effusion_only if t.stage == 5]
    assert comparison[0].question.count(IMAGE_PLACEHOLDER) == 1 and comparison[0].image_input_count == 3
    assert [t.turn_index for t in effusion_only] == list(range(len(effusion_only)))

    nothing = _walk(default_script(), lambda t: "No.")
    assert {t.stage for t in nothing} == {1, 2, 7, 8}  # no findings: no stage 3/4, no prior: no stage 5
    devices = _walk(default_script(later_images=1), lambda t: "yes" if "support devices" in t.question else "no")
    assert {t.stage for t in devices} == {1, 2, 3, 6, 7, 8}  # devices are not a pathology: no stage 4
    assert sum(t.stage == 2 for t in nothing) == 6


def test_says_yes():
    assert says_yes("Yes.") and says_yes("yes, a small one") and says_yes("  YES")
    assert not says_yes("No.") and not says_yes("") and not says_yes("Yesterday") and not says_yes("B. AP")


def test_script_runs_through_the_chain(world):
    study = world["studies"][0]
    scripted = ChainStudy("new-film", study.images[:2], "You read chest X-rays.",
                          lambda: default_script(current_images=1, prior_images=1))
    results = run_chain(world["decoder"], world["params"], world["tokenizer"], [scripted, *world["studies"][1:]],
                        context="own", max_new_tokens=BUDGET)
    assert [r.stage for r in results[0]][:8] == [1, 1, 2, 2, 2, 2, 2, 2]
    assert results[0][-1].stage == 8 and all(r.reference is None for r in results[0])


def test_chain_errors_name_the_study_and_turn(world):
    run = lambda studies, context="own": run_chain(  # noqa: E731
        world["decoder"], world["params"], world["tokenizer"], studies, context=context, max_new_tokens=BUDGET)
    images = world["studies"][0].images[:1]
    no_reference = ChainStudy("s-noref", images, "sys", lambda: default_script())
    with pytest.raises(ValueError, match="'s-noref' turn 0: context 'teacher' needs a reference"):
        run([no_reference], "teacher")
    too_many = Turn(0, 1, "View_Information", "captioning", "<image> <image> Which view?", 2, "PA")
    with pytest.raises(ValueError, match="'s-two' turn 0: image_input_count 2 outside 0..1"):
        run([ChainStudy("s-two", images, "sys", lambda: fixed_plan([too_many]))])
    with pytest.raises(ValueError, match="question script is empty"):
        run([ChainStudy("s-empty", images, "sys", lambda: fixed_plan([]))])
    with pytest.raises(ValueError, match="unknown context mode"):
        run([no_reference], "teachers")
    with pytest.raises(ValueError, match="unknown context mode 'swapped'"):  # an evaluation mode, not a chain's
        run([no_reference], "swapped")
    five = np.repeat(images, 5, axis=0)
    with pytest.raises(ValueError, match="'s-five' has 5 images, the model takes at most 4"):
        run([ChainStudy("s-five", five, "sys", lambda: default_script())])
