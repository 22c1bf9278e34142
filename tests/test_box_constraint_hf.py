"""The box grammar travels with the export: greedy `generate` of the exported PyTorch LLaVA with
`BoxLogitsProcessor` writes the JAX decoder's detection answers token for token, and they parse."""

import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlavaForConditionalGeneration, LogitsProcessorList

from cxrtrek_jax.decoding import ChainStudy, DecodeSpec, StepwiseDecoder, Turn, fixed_plan, run_chain, study_turns
from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.hf.box_logits import BoxLogitsProcessor
from cxrtrek_jax.model import CXRTrekNet, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.schema.boxes import parse_boxes
from data_pipeline.schema.records import IMAGE_PLACEHOLDER
from data_pipeline.text.box_grammar import BoxGrammar, is_box_turn
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

BUDGET = 44
SYSTEM = "You read chest X-rays."


@pytest.mark.slow
def test_exported_generate_with_the_processor_writes_the_jax_boxes(tmp_path):
    phantom = PhantomConfig(size=64, turns_per_study=(10, 14), prob_prior=0.0)
    pairs = [generate_study(5, index, phantom) for index in range(4)]
    tokenizer = train_tokenizer(training_texts([study for study, _ in pairs]), 500)
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 2})
    model = CXRTrekNet(config, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    grammar = BoxGrammar.build(tokenizer, config.vocab_size)
    assert BUDGET >= grammar.min_tokens
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=512, max_answer_tokens=BUDGET, max_turns=4)
    decoder = StepwiseDecoder(graphdef, config, spec, grammar=grammar)
    studies = []
    for study, images in pairs:
        detection = next(t for t in study_turns(study) if is_box_turn(t.qtype))
        turn = Turn(0, 3, detection.task_type, detection.qtype, detection.question.replace(IMAGE_PLACEHOLDER, ""),
                    1, detection.reference)
        pixels = resize_with_pad(images[study.images[0]], config.vision.image_size)[None]
        studies.append(ChainStudy(study.study_id, pixels, SYSTEM, lambda turn=turn: fixed_plan([turn])))
    ours = run_chain(decoder, params, tokenizer, studies, context="own", max_new_tokens=BUDGET)

    hf_conversion.save_hf_checkpoint(nnx.state(model, nnx.Param), config, str(tmp_path), bos_token_id=tokenizer.bos_id,
                                     eos_token_id=tokenizer.end_of_turn_id, pad_token_id=tokenizer.pad_id)
    torch_model = LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    suppress = [tokenizer.image_id, tokenizer.bos_id, tokenizer.pad_id, *range(tokenizer.vocab_size, config.vocab_size)]
    for study, (result,) in zip(studies, ours):
        (turn,) = list(study.plan())
        ids = tokenizer.encode_chat([{"role": "system", "content": SYSTEM}]).ids.tolist()
        ids += tokenizer.encode_chat([{"role": "user", "content": IMAGE_PLACEHOLDER + "\n" + turn.question}],
                                     add_generation_prompt=True, tokens_per_image=config.tokens_per_image).ids[1:].tolist()
        box = BoxLogitsProcessor(grammar, prompt_length=len(ids), max_new_tokens=BUDGET)
        pixels = torch.tensor(np.repeat(study.images[:1, None], 3, axis=1) * 2.0 - 1.0)
        with torch.no_grad():
            out = torch_model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, do_sample=False,
                                       max_new_tokens=BUDGET, eos_token_id=tokenizer.end_of_turn_id,
                                       pad_token_id=tokenizer.pad_id, suppress_tokens=suppress,
                                       logits_processor=LogitsProcessorList([box]))
        generated = out[0, len(ids):].tolist()
        assert generated[-1] == tokenizer.end_of_turn_id
        assert list(result.answer_tokens) == generated[:-1], study.study_id
        assert parse_boxes(tokenizer.decode(generated))
