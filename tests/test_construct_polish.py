"""The optional LLM polish of constructed items: the rewrite check (hand-written rewrites that keep
or break the report's facts), the fallback, and the mechanics with a tiny random causal LM built
here from a config (its noise must never pass the check)."""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from data_pipeline.construct.llm_polish import ACCEPTED, check_rewrite, polish_items, polish_study, polish_with_llm
from data_pipeline.construct.report_facts import FindingMention, ReportFacts, ReportSentence
from data_pipeline.construct.source_study import SourceImage, SourceStudy, TimelineStudy
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.study_assembly import assemble_study
from data_pipeline.files.cxrtrek_json import study_to_element
from data_pipeline.files.validation import validate_elements

# "Small left pleural effusion. No pneumothorax. Atelectasis at the left base."
FACTS = ReportFacts(
    sections={"findings": "Small left pleural effusion. No pneumothorax. Atelectasis at the left base."},
    sentences=(ReportSentence("findings", 0, "Small left pleural effusion."),
               ReportSentence("findings", 1, "No pneumothorax."),
               ReportSentence("findings", 2, "Atelectasis at the left base.")),
    mentions=(FindingMention("pleural effusion", "abnormality", "present", 0, "pleural effusion", ("left",), (),
                             "small"),
              FindingMention("pneumothorax", "abnormality", "absent", 1, "pneumothorax"),
              FindingMention("atelectasis", "abnormality", "present", 2, "atelectasis", ("left",), ("base",))),
)


@pytest.mark.parametrize("original, rewrite, yes_no", [
    ("Is there any evidence of pleural effusion in the X-ray?", "Does the X-ray show any evidence of pleural effusion?",
     False),
    ("Yes. There is evidence of small left pleural effusion.", "Yes. A small left pleural effusion is evident.", True),
    ("The X-ray shows small left pleural effusion and atelectasis in the left base.",
     "Small left pleural effusion and atelectasis in the left base are shown on the X-ray.", False),
])
def test_a_faithful_rewrite_passes(original, rewrite, yes_no):
    assert check_rewrite(original, rewrite, [FACTS], yes_no=yes_no) is None


@pytest.mark.parametrize("original, rewrite, yes_no, reason", [
    ("No. The pleural effusion is located on the left side.", "No. The pleural effusion is located on the right side.",
     True, "side/location words differ: ['left'] vs ['right']"),
    ("Yes. There is evidence of small left pleural effusion.", "No. There is evidence of small left pleural effusion.",
     True, "yes/no changed: 'yes' vs 'no'"),
    ("The X-ray shows small left pleural effusion and atelectasis in the left base.",
     "The X-ray shows a small left pleural effusion in the left base.", False,
     "findings named differ: ['atelectasis', 'pleural effusion'] vs ['pleural effusion']"),
    ("There is no evidence of pneumothorax on the X-ray.", "There is evidence of pneumothorax on the X-ray.", False,
     "negation added or dropped"),
    ("Is there any evidence of pleural effusion in the X-ray?",
     "Is there any evidence of pleural effusion in the X-ray? "
     "Please look for any evidence of pleural effusion in the X-ray and answer whether there is any at all.", False,
     "length 157 is not within half to twice the rule text's 55"),
    ("Assess the technical quality of the chest X-ray.", "Quux blorp zing wobble frotz glim.", False,
     "keeps only 0% of the rule text's words"),
    ("Here is the current X-ray image: <image> . Is the heart enlarged?",
     "Here is the current X-ray image. Is the heart enlarged?", False,
     "image placeholders or box markup changed"),
])
def test_an_unfaithful_rewrite_is_refused_with_its_reason(original, rewrite, yes_no, reason):
    assert check_rewrite(original, rewrite, [FACTS], yes_no=yes_no) == reason


def _study():
    source = SourceStudy("plain", "p1", "s1", "(report)", (SourceImage("p1/s1/f.png", "PA"),))
    return assemble_study(StageInput(TimelineStudy(source), FACTS)).study


def test_polish_keeps_checked_rewrites_and_falls_back_on_the_rest():
    study = _study()
    effusion = next(i for i in study.items if i.extras.get("target") == "abnormality_[pleural effusion]")
    pneumothorax = next(i for i in study.items if i.extras.get("target") == "abnormality_[pneumothorax]")
    rewrites = {effusion.answer: effusion.answer.replace("There is evidence of", "The X-ray demonstrates"),
                pneumothorax.answer: "Yes." if pneumothorax.answer == "No." else "Yes. " + pneumothorax.answer[4:]}

    def rewrite(kind, text):
        return rewrites.get(text, text.replace("X-ray", "radiograph") if kind == "question" else text)

    polished = polish_study(study, [FACTS], rewrite)
    by_target = {i.extras.get("target"): i for i in polished.items}
    kept = by_target["abnormality_[pleural effusion]"]
    assert (kept.extras["polish_flag"], kept.extras["polish_reason"]) == (True, ACCEPTED)
    assert kept.question == effusion.question.replace("X-ray", "radiograph")
    assert kept.answer == rewrites[effusion.answer]
    refused = by_target["abnormality_[pneumothorax]"]
    assert refused.extras["polish_flag"] is False and refused.answer == pneumothorax.answer
    assert refused.extras["polish_reason"] == "answer: yes/no changed: 'no' vs 'yes' (rule text kept)"
    closed = [i for i in polished.items if "choice" in i.qtype]
    assert closed and all(i.extras["polish_reason"] == "closed options and boxes are kept verbatim" for i in closed)
    assert [m.content for m in polished.messages[1::2]] == [i.question for i in polished.items]
    assert validate_elements([study_to_element(polished)]).errors == ()


def _tiny_causal_lm(directory, chat_template=None):
    """A byte-level BPE tokenizer (with `chat_template` when given) and a randomly initialised
    1-layer Llama, saved as safetensors."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, show_progress=False,
                                  special_tokens=[AddedToken(t, special=True, normalized=False)
                                                  for t in ("<s>", "</s>")],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["Rewrite this question about a chest X-ray.", "small left pleural effusion"],
                                trainer=trainer)
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    if chat_template:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    config = LlamaConfig(vocab_size=backend.get_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(str(directory), safe_serialization=True)


@pytest.mark.parametrize("chat_template", [None, "{% for m in messages %}USER: {{ m['content'] }}{% endfor %}"
                                                  "{% if add_generation_prompt %} ASSISTANT:{% endif %}"])
def test_a_random_model_runs_and_every_rewrite_falls_back(tmp_path, chat_template):
    _tiny_causal_lm(tmp_path, chat_template)
    items = _study().items[:6]
    polished = polish_with_llm(items, FACTS, tmp_path, max_new_tokens=12)
    assert [(i.question, i.answer) for i in polished] == [(i.question, i.answer) for i in items]
    assert all(i.extras["polish_flag"] is False and i.extras["polish_reason"] for i in polished)
    assert any(i.extras["polish_reason"].endswith("(rule text kept)") for i in polished)


def test_a_model_directory_without_safetensors_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights"):
        polish_with_llm(_study().items[:1], FACTS, tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        polish_with_llm(_study().items[:1], FACTS, tmp_path / "missing")
