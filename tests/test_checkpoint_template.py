"""Conversations through a checkpoint's own chat template, token for token as its Hugging Face processor
renders and tokenizes them: llava-1.5 and Gemma 3 in their published layouts (templates verbatim) and a
plain-string ChatML template; 1-, 2- and 5-turn conversations with 1-3 images, with and without a system
prompt; the loss mask against the processor's answer spans."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from cxrtrek_jax.hf import importer as hf_import
from data_pipeline.schema.records import IMAGE_PLACEHOLDER
from data_pipeline.text.checkpoint_template import CheckpointTemplate, TemplateError
from data_pipeline.text.tokenizer import load_tokenizer
from tests.published_checkpoints import (
    GEMMA3_TEMPLATE, LLAVA15_TEMPLATE, TOKENS_PER_IMAGE, write_chatml, write_gemma3, write_llava15)

SYSTEM = "You read chest radiographs."
QUESTIONS = ["Which view is this?", "Is there a pleural effusion?", "Describe the heart size.",
             "Is the study compared with a prior?", "What is advised?"]
ANSWERS = ["PA view.", "No, the costophrenic angles are sharp.", "The cardiac silhouette is enlarged.",
           "Yes, the effusion has increased.", "Follow up."]


def _config_json(directory, model_type, backend):
    ids = backend.token_to_id
    extra = ({"boi_token_index": ids("<start_of_image>"), "eoi_token_index": ids("<end_of_image>"),
              "image_token_index": ids("<image_soft_token>")} if model_type == "gemma3"
             else {"image_token_index": ids("<image>")})
    (directory / "config.json").write_text(json.dumps({"model_type": model_type, **extra}))


@pytest.fixture(scope="module", params=["llava15", "gemma3", "chatml"])
def family(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    writer = {"llava15": write_llava15, "gemma3": write_gemma3, "chatml": write_chatml}[request.param]
    backend = writer(directory)
    _config_json(directory, "gemma3" if request.param == "gemma3" else "llava", backend)
    tokenizer, source = hf_import.import_tokenizer(directory)
    processor = AutoProcessor.from_pretrained(str(directory))
    return dict(name=request.param, dir=directory, tokenizer=tokenizer, source=source, processor=processor)


def _conversation(turns, images, system, placeholder=IMAGE_PLACEHOLDER):
    """(our messages, the same as Hugging Face messages with PIL images): `images` spread over the
    first turns (one per turn, the rest on the first); non-square images."""
    per_turn = [0] * turns
    for k in range(images):
        per_ = k if k < turns else 0
        per_turn[per_] += 1
    ours, theirs, pictures = [], [], []
    if system:
        ours.append({"role": "system", "content": SYSTEM})
        theirs.append({"role": "system", "content": [{"type": "text", "text": SYSTEM}]})
    for t in range(turns):
        shown = [Image.fromarray(np.random.default_rng(10 * t + k).integers(0, 255, (40 + 7 * k, 61), np.uint8))
                 for k in range(per_turn[t])]
        pictures += shown
        question, answer = QUESTIONS[t % 5], ANSWERS[t % 5]
        ours.append({"role": "user", "content": f"{placeholder}\n" * per_turn[t] + question})
        theirs.append({"role": "user", "content": [{"type": "image", "image": p} for p in shown]
                       + [{"type": "text", "text": question}]})
        ours.append({"role": "assistant", "content": answer})
        theirs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return ours, theirs, pictures


def _as_strings(messages, marker):
    """Hugging Face messages for a plain-string template: each image as the marker in the text."""
    out = []
    for m in messages:
        images = sum(item["type"] == "image" for item in m["content"])
        text = "".join(item["text"] for item in m["content"] if item["type"] == "text")
        out.append({"role": m["role"], "content": f"{marker}\n" * images + text})
    return out


def _processor_ids(family, messages, pictures, *, generation_prompt, mask=False):
    processor = family["processor"]
    if family["name"] == "chatml":
        text = processor.tokenizer.apply_chat_template(_as_strings(messages, "<image>"), tokenize=False,
                                                       add_generation_prompt=generation_prompt)
        return processor(text=text, images=pictures or None)["input_ids"][0], None
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt,
                                        return_assistant_tokens_mask=mask)
    return list(out["input_ids"][0]), (list(out["assistant_masks"][0]) if mask else None)


def _answer_reference(family, theirs, pictures):
    """The answer tokens by the processor: where it marks them ({% generation %}), else what each
    answer's conversation adds after the generation prompt of the conversation before it."""
    full, mask = _processor_ids(family, theirs, pictures, generation_prompt=False,
                                mask=family["name"] == "llava15")
    if mask is not None:
        return np.asarray(mask, bool)
    reference = np.zeros(len(full), bool)
    for k, message in enumerate(theirs):
        if message["role"] != "assistant":
            continue
        shown = [item["image"] for m in theirs[:k] for item in m["content"] if item["type"] == "image"]
        prompt, _ = _processor_ids(family, theirs[:k], shown, generation_prompt=True)
        upto, _ = _processor_ids(family, theirs[:k + 1], shown, generation_prompt=False)
        assert full[:len(upto)] == upto and upto[:len(prompt)] == prompt
        reference[len(prompt):len(upto)] = True
    return reference


def test_import_keeps_the_checkpoints_own_template(family):
    template = family["tokenizer"].template
    assert template is not None
    expected = {"llava15": ("chat_template.json", LLAVA15_TEMPLATE, "lists", "<image>", "</s>"),
                "gemma3": ("chat_template.json", GEMMA3_TEMPLATE, "lists", "<start_of_image>", "<end_of_turn>"),
                "chatml": ("tokenizer_config.json", None, "strings", "<image>", "<|im_end|>")}[family["name"]]
    assert template.source == expected[0]
    if expected[1] is not None:
        assert template.chat_template == expected[1]
    assert (template.content_style, template.image_marker, family["tokenizer"].format.end_of_turn) == expected[2:]
    assert family["source"].startswith("the checkpoint's own chat template")


@pytest.mark.parametrize("turns,images", [(1, 1), (2, 2), (5, 3)])
@pytest.mark.parametrize("system", [True, False])
def test_token_ids_and_answer_mask_equal_the_processors(family, turns, images, system):
    tokenizer = family["tokenizer"]
    ours, theirs, pictures = _conversation(turns, images, system, tokenizer.format.image)
    encoded = tokenizer.encode_chat(ours, tokens_per_image=TOKENS_PER_IMAGE)
    expected, _ = _processor_ids(family, theirs, pictures, generation_prompt=False)
    assert encoded.ids.tolist() == expected
    assert encoded.num_images == images
    mask = np.zeros(encoded.ids.size, bool)
    for span in encoded.spans:
        if span.role == "assistant":
            mask[span.answer] = True
    np.testing.assert_array_equal(mask, _answer_reference(family, theirs, pictures))
    # The question of the last turn, asked: the processor's generation prompt.
    asked = tokenizer.encode_chat(ours[:-1], tokens_per_image=TOKENS_PER_IMAGE, add_generation_prompt=True)
    expected_prompt, _ = _processor_ids(family, theirs[:-1], pictures, generation_prompt=True)
    assert asked.ids.tolist() == expected_prompt


def test_saved_tokenizer_round_trips_the_template(family, tmp_path):
    family["tokenizer"].save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.template == family["tokenizer"].template
    ours, _, _ = _conversation(2, 2, True, loaded.format.image)
    assert loaded.encode_chat(ours, tokens_per_image=4).ids.tolist() == \
        family["tokenizer"].encode_chat(ours, tokens_per_image=4).ids.tolist()
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == family["tokenizer"].template.chat_template


def test_a_template_whose_messages_cannot_be_told_apart_is_refused():
    reversed_template = ("{% for message in messages | reverse %}{{ message['role'] + ': ' + message['content'] }}"
                         "{% endfor %}")
    template = CheckpointTemplate(reversed_template, "tokenizer_config.json", "strings", "<image>")
    with pytest.raises(TemplateError, match="cannot be told apart"):
        template.render([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                        image_expansion="<image>")


def test_a_template_that_raises_names_its_file():
    template = CheckpointTemplate("{{ raise_exception('roles must alternate') }}", "chat_template.jinja", "strings",
                                  "<image>")
    with pytest.raises(TemplateError, match=r"chat_template.jinja.*roles must alternate"):
        template.render([{"role": "user", "content": "Q"}], image_expansion="<image>")
