"""llava-1.5 as llava-hf publishes it (its processor's chat_template.json verbatim, a Llama
SentencePiece-style tokenizer, `CLIPImageProcessor`, generation_config.json) imports with no flags and
keeps its own template: training sequences are trained on the template's answer blocks exactly as the
processor marks them, and the export gives identical tensors and an `AutoProcessor` that renders the same
tokens as the original."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from cxrtrek_jax.hf import importer as hf_import
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.sequences import SequenceConfig, build_sequences
from data_pipeline.text.tokenizer import load_tokenizer
from tests.published_checkpoints import LLAVA15_TEMPLATE, TOKENS_PER_IMAGE, write_llava15
from tests.test_hf_import import IMAGE_SIZE, tiny_llava

SYSTEM = "You read chest radiographs."
TURNS = (("Is there a pleural effusion?", "No, the costophrenic angles are sharp."),
         ("Describe the heart size.", "The cardiac silhouette is enlarged."))


def _hf_conversation(image):
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]
    for k, (question, answer) in enumerate(TURNS):
        images = [{"type": "image", "image": image}] if k == 0 else []
        messages.append({"role": "user", "content": images + [{"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava15") / "llava-1.5-7b-hf"
    backend = write_llava15(directory)
    model = tiny_llava(backend.get_vocab_size(), backend.token_to_id("<image>"), seed=3)
    model.save_pretrained(str(directory))
    return directory, model


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt15") / "imported"
    assert main(["import-hf", str(published[0]), "--out", str(out), "--max-images", "2"]) == 0
    return out


def test_the_import_keeps_its_own_template_and_processor(published, imported, capsys):
    tokenizer = load_tokenizer(imported / "tokenizer")
    assert tokenizer.template.chat_template == LLAVA15_TEMPLATE
    assert tokenizer.template.source == "chat_template.json" and tokenizer.template.content_style == "lists"
    assert tokenizer.end_of_turn_id == tokenizer.eos_id  # the template writes no end token: generation stops at </s>
    assert (imported / "tokenizer" / "preprocessor_config.json").exists()
    capsys.readouterr()
    assert main(["import-hf", str(published[0]), "--out", str(published[0].parent / "printed")]) == 0
    assert "chat format (from the checkpoint's own chat template (chat_template.json))" in capsys.readouterr().out


def test_training_trains_the_answers_the_processor_marks(published, imported):
    """The loss covers exactly the tokens of the template's {% generation %} blocks, as the processor's
    `return_assistant_tokens_mask` marks them."""
    tokenizer = load_tokenizer(imported / "tokenizer")
    items = tuple(QAItem(stage=k + 1, task_type="t", qtype="open", image_input_count=1, question=q, answer=a)
                  for k, (q, a) in enumerate(TURNS))
    study = Study(study_id="s", images=("a.png",), items=items)
    config = SequenceConfig(max_length=400, tokens_per_image=TOKENS_PER_IMAGE, system_prompt=SYSTEM)
    (sequence,), _ = build_sequences(study, tokenizer, config)
    image = Image.fromarray(np.zeros((40, 60), np.uint8))
    processor = AutoProcessor.from_pretrained(str(published[0]))
    out = processor.apply_chat_template(_hf_conversation(image), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = np.asarray(out["input_ids"][0]), np.asarray(out["assistant_masks"][0], bool)
    np.testing.assert_array_equal(np.concatenate([sequence.input_tokens[:1], sequence.target_tokens]), ids)
    np.testing.assert_array_equal(sequence.loss_mask > 0, mask[1:])
    assert tokenizer.decode(sequence.target_tokens[sequence.loss_mask > 0]).startswith(TURNS[0][1])


def test_export_gives_identical_tensors_and_the_same_processor(published, imported, tmp_path):
    directory, hf_model = published
    out = tmp_path / "exported"
    assert main(["export-hf", str(imported), "--out", str(out)]) == 0
    again = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    original, exported = hf_model.state_dict(), again.state_dict()
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[k], exported[k]) for k in original)
    image = Image.fromarray((np.arange(40 * 60).reshape(40, 60) % 251).astype(np.uint8))
    source, target = AutoProcessor.from_pretrained(str(directory)), AutoProcessor.from_pretrained(str(out))
    for generation in (False, True):
        conversation = _hf_conversation(image)[: 4 if generation else 5]
        a = source.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=generation)
        b = target.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=generation)
        assert a["input_ids"] == b["input_ids"]
        np.testing.assert_array_equal(np.asarray(a["pixel_values"]), np.asarray(b["pixel_values"]))
    # Re-importing the export keeps the template.
    assert hf_import.import_tokenizer(out)[0].template == load_tokenizer(imported / "tokenizer").template
