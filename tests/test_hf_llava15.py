"""A llava-1.5-style directory (its tokenizer's own Jinja chat_template, "USER: ... ASSISTANT: ...",
"</s>" closing each answer and also the end of sequence) imports with no flags, and exports back
to identical tensors, identical logits and identical rendered conversations."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from cxrtrek_jax.hf import importer as hf_import
from data_pipeline.text.chat_template import ChatFormat
from data_pipeline.text.tokenizer import load_tokenizer
from data_pipeline.text.sequences import SequenceConfig, build_sequences
from data_pipeline.schema.records import QAItem, Study
from tests.test_hf_import import IMAGE_SIZE, TEXTS, TOKENS_PER_IMAGE, tiny_llava

# The llava-1.5 (Vicuna v1) conversation layout as a tokenizer chat_template.
VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)
EXPECTED = ChatFormat(bos="<s>", eos="</s>", pad="<unk>", image="<image>", end_of_turn="</s>", system_prefix="",
                      user_prefix="USER: ", assistant_prefix="ASSISTANT: ", system_end=" ", user_end=" ")
CONVERSATION = [
    {"role": "system", "content": "A chat between a curious user and an artificial intelligence assistant."},
    {"role": "user", "content": "<image>\nIs there a pleural effusion?"},
    {"role": "assistant", "content": "No, the costophrenic angles are sharp."},
    {"role": "user", "content": "Describe the heart size."},
    {"role": "assistant", "content": "The cardiac silhouette is enlarged."},
]


def write_llama_style_tokenizer(directory):
    """A byte-level BPE tokenizer with Llama's special tokens (no pad) plus an added "<image>", and the
    Vicuna chat_template, saved as a Hugging Face tokenizer directory (no cxrtrek files)."""
    specials = ["<unk>", "<s>", "</s>", "<image>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, min_frequency=1, show_progress=False,
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS + ["USER: ASSISTANT: A chat between"], trainer=trainer)
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "chat_template": VICUNA_TEMPLATE, "clean_up_tokenization_spaces": False}))
    return backend


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava15") / "llava-1.5"
    directory.mkdir()
    backend = write_llama_style_tokenizer(directory)
    model = tiny_llava(backend.get_vocab_size(), backend.token_to_id("<image>"), seed=3)
    model.save_pretrained(str(directory))
    return directory, model


@pytest.fixture(scope="module")
def imported(vicuna_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt15") / "imported"
    assert main(["import-hf", str(vicuna_dir[0]), "--out", str(out), "--max-images", "2"]) == 0
    return out


def test_chat_format_comes_from_the_chat_template(vicuna_dir, imported, capsys):
    assert hf_import.derive_chat_format(vicuna_dir[0]) == EXPECTED
    assert load_tokenizer(imported / "tokenizer").format == EXPECTED
    capsys.readouterr()
    assert main(["import-hf", str(vicuna_dir[0]), "--out", str(vicuna_dir[0].parent / "printed")]) == 0
    printed = capsys.readouterr().out
    assert "chat format (from the tokenizer's chat_template)" in printed
    assert "end_of_turn='</s>'" in printed and "user_prefix='USER: '" in printed and "user_end=' '" in printed


def test_answers_train_through_the_end_of_sequence_token(imported):
    """Loss covers each answer and its closing "</s>" (which is also eos); decoding stops there."""
    tokenizer = load_tokenizer(imported / "tokenizer")
    assert tokenizer.end_of_turn_id == tokenizer.eos_id
    items = tuple(QAItem(stage=stage, task_type="t", qtype="open", image_input_count=1, question=q, answer=a)
                  for stage, q, a in ((1, CONVERSATION[1]["content"], CONVERSATION[2]["content"]),
                                      (2, CONVERSATION[3]["content"], CONVERSATION[4]["content"])))
    study = Study(study_id="s", images=("a.png",), items=items)
    config = SequenceConfig(max_length=400, tokens_per_image=4, system_prompt=CONVERSATION[0]["content"])
    (sequence,), _ = build_sequences(study, tokenizer, config)
    targets, loss = sequence.target_tokens, sequence.loss_mask > 0
    trained = targets[loss]
    assert trained.tolist().count(tokenizer.eos_id) == 2 and trained[-1] == tokenizer.eos_id
    first_end = trained.tolist().index(tokenizer.eos_id)
    assert tokenizer.decode(trained) == CONVERSATION[2]["content"]  # decoding stops at the first "</s>"
    assert tokenizer.decode(trained[first_end + 1:]) == CONVERSATION[4]["content"]
    # The " " closing each question is not trained; the ids are those of the rendered conversation.
    space = tokenizer.encode_text(" ")
    assert len(space) == 1 and not loss[targets == space[0]].any()
    full = np.concatenate([sequence.input_tokens[:1], targets])
    assert tokenizer.backend.decode(full.tolist(), skip_special_tokens=False).count("</s>") == 2


def test_export_gives_identical_tensors_logits_and_conversations(vicuna_dir, imported, tmp_path):
    directory, hf_model = vicuna_dir
    out = tmp_path / "exported"
    assert main(["export-hf", str(imported), "--out", str(out)]) == 0
    again = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    original, exported = hf_model.state_dict(), again.state_dict()
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[k], exported[k]) for k in original)

    source_tok, exported_tok = AutoTokenizer.from_pretrained(str(directory)), AutoTokenizer.from_pretrained(str(out))
    for n in (2, 3, 4, 5):
        for generation in (False, True):
            messages = CONVERSATION[:n]
            assert (exported_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
                    == source_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))

    tokenizer = load_tokenizer(imported / "tokenizer")
    ids = tokenizer.encode_chat(CONVERSATION, tokens_per_image=TOKENS_PER_IMAGE).ids
    rng = np.random.default_rng(0)
    image = rng.random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    pixels = torch.tensor(np.repeat(image[None, None], 3, axis=1) * 2.0 - 1.0)
    with torch.no_grad():
        before = hf_model(input_ids=torch.tensor(ids[None]).long(), pixel_values=pixels).logits.numpy()
        after = again(input_ids=torch.tensor(ids[None]).long(), pixel_values=pixels).logits.numpy()
    np.testing.assert_array_equal(before, after)
    loaded = load_checkpoint_model(imported)
    model = nnx.merge(loaded.graphdef, loaded.state)
    images = np.zeros((1, 2, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    images[0, 0] = image
    ours = model(jnp.asarray(ids[None]), jnp.asarray(images), jnp.asarray([[True, False]]))[0]
    np.testing.assert_allclose(np.asarray(ours), before, atol=1e-4, rtol=0)
    # Re-importing the export reads our chat format file: the same format again.
    assert hf_import.derive_chat_format(out) == EXPECTED
