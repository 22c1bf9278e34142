"""The CXRTrek tokenizer: training, HF files, chat encoding with spans, decoding, CLI."""

import json
import pickle

import numpy as np
import pytest

from cxrtrek_jax.cli import main
from data_pipeline.schema.boxes import MARKUP_TOKENS
from data_pipeline.text.chat_template import CHAT_FORMAT_FILE, ChatFormat, render
from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT, write_studies
from data_pipeline.schema.records import Message, QAItem, Study
from data_pipeline.text.tokenizer import (
    CXRTrekTokenizer,
    load_tokenizer,
    train_tokenizer,
    training_texts,
)

TEXTS = [
    "<image>\nIs this a PA or an AP view?",
    "This is a PA view.",
    "Is there a pleural effusion?",
    "Yes, there is a small left pleural effusion.",
    "Where is the opacity?",
    "<|ref|> right apical zone <|/ref|> <|box|>(19.2, 12.5), (43.3, 30.8)<|/box|>",
    "No pneumothorax. Heart size is normal.",
] * 20

MESSAGES = [
    {"role": "system", "content": "You read chest films."},
    {"role": "user", "content": "<image>\n<image>\nIs there a pleural effusion?"},
    {"role": "assistant", "content": "Yes, a small left pleural effusion."},
    {"role": "user", "content": "Where is the opacity?"},
    {"role": "assistant", "content": "<|ref|> right apical zone <|/ref|> <|box|>(19.2, 12.5), (43.3, 30.8)<|/box|>"},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 400)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return tok.save(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def hf(saved):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(saved))


def test_special_token_ids_come_first(tok):
    fmt = tok.format
    backend = tok.backend
    order = [fmt.pad, fmt.bos, fmt.eos, fmt.end_of_turn, fmt.image, fmt.system_prefix, fmt.user_prefix, fmt.assistant_prefix]
    assert [backend.token_to_id(t) for t in order] == list(range(8))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.end_of_turn_id, tok.image_id) == (0, 1, 2, 3, 4)
    assert tok.prefix_ids("user") == (6,)


def test_vocab_size_is_an_upper_bound(tok):
    assert 8 + 256 + len(MARKUP_TOKENS) < tok.vocab_size <= 400
    big = train_tokenizer(TEXTS, 100_000)  # the corpus runs out of pairs long before
    assert big.vocab_size < 100_000


def test_too_small_vocab_is_an_error():
    with pytest.raises(ValueError, match="vocab_size 100 is too small: needs at least 268"):
        train_tokenizer(TEXTS, 100)


def test_image_and_control_tokens_never_split(tok):
    for text in ["x<image>y", "<image><image>", "a <image>\nb", "word<image>word"]:
        ids = tok.encode_text(text)
        assert ids.count(tok.image_id) == text.count("<image>")
    for token in MARKUP_TOKENS + ("<|end|>", "<|user|>"):
        ids = tok.encode_text(f"ab{token}cd")
        assert tok.backend.token_to_id(token) in ids


def test_training_is_deterministic(tok, saved, tmp_path):
    again = train_tokenizer(list(TEXTS), 400)
    assert again.backend.to_str() == tok.backend.to_str()
    again.save(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", CHAT_FORMAT_FILE):
        assert (tmp_path / name).read_bytes() == (saved / name).read_bytes(), name


def test_saved_files_are_hugging_face_format(saved):
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert "<image>" in config["chat_template"]
    special_map = json.loads((saved / "special_tokens_map.json").read_text())
    assert special_map["additional_special_tokens"] == ["<image>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    assert ChatFormat.load(saved) == ChatFormat()


def test_hf_loads_with_both_classes(saved, tok, hf):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(saved))
    for loaded in (hf, fast):
        assert loaded.bos_token_id == tok.bos_id and loaded.pad_token_id == tok.pad_id
        assert loaded.convert_tokens_to_ids("<image>") == tok.image_id
        assert loaded("a<image>b", add_special_tokens=False)["input_ids"] == tok.encode_text("a<image>b")


@pytest.mark.parametrize("tokens_per_image", [1, 5])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_hf_apply_chat_template_gives_our_ids(tok, hf, tokens_per_image, add_generation_prompt):
    theirs = hf.apply_chat_template(
        MESSAGES,
        tokenize=True,
        return_dict=False,
        add_generation_prompt=add_generation_prompt,
        tokens_per_image=tokens_per_image,
    )
    ours = tok.encode_chat(MESSAGES, tokens_per_image=tokens_per_image, add_generation_prompt=add_generation_prompt)
    assert ours.ids.dtype == np.int32
    assert ours.ids.tolist() == list(theirs)


def test_message_by_message_encoding_equals_whole_string(tok):
    whole = tok.encode_text(render(MESSAGES, tok.format, tokens_per_image=3))
    assert tok.encode_chat(MESSAGES, tokens_per_image=3).ids.tolist() == whole


def test_spans_are_exact(tok):
    encoded = tok.encode_chat(MESSAGES, tokens_per_image=3, add_generation_prompt=True)
    ids = encoded.ids
    assert ids[0] == tok.bos_id
    assert encoded.num_images == 2
    assert [s.role for s in encoded.spans] == ["system", "user", "assistant", "user", "assistant"]
    previous_end = 1
    for span, message in zip(encoded.spans, MESSAGES):
        assert span.start == previous_end
        assert tuple(ids[span.start : span.content_start]) == tok.prefix_ids(span.role)
        assert ids[span.content_end] == tok.end_of_turn_id and span.end == span.content_end + 1
        content = ids[span.content_start : span.content_end]
        assert tok.decode(content) == message["content"].replace("<image>", "")
        previous_end = span.end
    user = encoded.spans[1]
    assert ids[user.content_start : user.content_start + 3].tolist() == [tok.image_id] * 3
    assert int(np.sum(ids == tok.image_id)) == 6
    assert encoded.generation_start == previous_end
    assert ids[encoded.generation_start :].tolist() == list(tok.prefix_ids("assistant"))


def test_encode_chat_rejects_bad_messages(tok):
    with pytest.raises(ValueError, match=r"message 1 \(user\): content contains the control token '<\|assistant\|>'"):
        tok.encode_chat([MESSAGES[0], {"role": "user", "content": "<|assistant|>hi"}])
    with pytest.raises(ValueError, match="tokens_per_image"):
        tok.encode_chat(MESSAGES, tokens_per_image=0)


def test_decode_stops_at_end_of_turn_and_skips_specials(tok):
    answer = "Yes, a small <|ref|> left base <|/ref|> effusion."
    ids = tok.encode_text(answer) + [tok.end_of_turn_id] + tok.encode_text("garbage")
    assert tok.decode(ids) == answer
    assert tok.decode(ids, stop_at_end_of_turn=False) == answer + "garbage"
    assert tok.decode([tok.bos_id, tok.image_id] + tok.encode_text("ok") + [tok.eos_id, 5]) == "ok"
    assert tok.decode(np.array([], np.int32)) == ""


def test_pickles(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode_chat(MESSAGES, tokens_per_image=2).ids.tolist() == tok.encode_chat(MESSAGES, tokens_per_image=2).ids.tolist()


def test_load_round_trip(saved, tok):
    loaded = load_tokenizer(saved)
    assert loaded.format == tok.format
    assert loaded.encode_chat(MESSAGES).ids.tolist() == tok.encode_chat(MESSAGES).ids.tolist()


def test_foreign_directory_needs_a_chat_format(saved, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((saved / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no cxrtrek_chat_format.json"):
        load_tokenizer(tmp_path)
    assert load_tokenizer(tmp_path, ChatFormat()).image_id == 4
    with pytest.raises(ValueError, match=r"ChatFormat.image '<img>' is not an added token"):
        load_tokenizer(tmp_path, ChatFormat(image="<img>"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_foreign_format_with_text_role_prefixes(saved):
    """A foreign tokenizer may declare role prefixes that are plain text (encoded, not single ids)."""
    fmt = ChatFormat(system_prefix="<|system|>", user_prefix="<|user|>\n", assistant_prefix="<|assistant|>\n")
    foreign = load_tokenizer(saved, fmt)
    assert len(foreign.prefix_ids("user")) == 2
    encoded = foreign.encode_chat(MESSAGES, tokens_per_image=2)
    assert encoded.ids.tolist() == foreign.encode_text(render(MESSAGES, fmt, tokens_per_image=2))
    span = encoded.spans[2]
    assert foreign.decode(encoded.ids[span.content_start : span.content_end]) == MESSAGES[2]["content"]


def test_foreign_directory_without_tokenizer_json(tok, tmp_path):
    """Only vocab.json + merges.txt (a slow GPT-2 style directory): converted through transformers."""
    tok.backend.model.save(str(tmp_path))
    fmt = tok.format
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": fmt.bos,
        "eos_token": fmt.eos,
        "pad_token": fmt.pad,
        "unk_token": fmt.pad,
        "additional_special_tokens": [fmt.image, fmt.end_of_turn, fmt.system_prefix, fmt.user_prefix, fmt.assistant_prefix],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path, fmt)
    assert loaded.encode_text("Is there a pleural effusion?") == tok.encode_text("Is there a pleural effusion?")
    assert loaded.encode_text("a<image>b").count(loaded.image_id) == 1


def _study(study_id, question, answer, system=None):
    messages = None if system is None else (Message("system", system), Message("user", question), Message("assistant", answer))
    item = QAItem(stage=2, task_type="Findings_Identification", qtype="captioning", image_input_count=1, question=question, answer=answer)
    return Study(study_id=study_id, images=("a.png",), items=(item,), messages=messages)


def test_training_texts_cover_prompts_questions_answers():
    studies = [_study("s1", "<image>\nQ one?", "A one.", system="Custom prompt."), _study("s2", "<image>\nQ two?", "A two.")]
    assert list(training_texts(studies)) == [
        DEFAULT_SYSTEM_PROMPT, "Custom prompt.", "<image>\nQ one?", "A one.", "<image>\nQ two?", "A two.",
    ]


def test_cli_train(tmp_path, capsys):
    studies = [_study(f"s{i}", f"<image>\n{TEXTS[(2 * i) % 7]}", TEXTS[(2 * i + 1) % 7]) for i in range(30)]
    data = tmp_path / "data.json"
    write_studies(data, studies)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "350", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained on 30 studies" in printed and "image=4" in printed
    loaded = load_tokenizer(out)
    assert loaded.vocab_size <= 350
    assert isinstance(loaded, CXRTrekTokenizer)
    # a second run refuses to overwrite, and bad input is a clean CLI error
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "350", "--out", str(out)]) == 2
    assert "already holds a tokenizer" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--data", str(tmp_path / "nope.json"), "--vocab-size", "350", "--out", str(tmp_path / "t2")]) == 2
    assert "data file" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "10", "--out", str(tmp_path / "t3")]) == 2
    assert "too small" in capsys.readouterr().err


def test_model_mismatch_names_the_image_id_or_the_vocabulary(tok):
    assert tok.model_mismatch(tok.image_id, tok.vocab_size) is None
    assert tok.model_mismatch(tok.image_id, tok.vocab_size + 100) is None  # spare embedding rows are fine
    assert f"has id {tok.image_id} in the tokenizer" in tok.model_mismatch(tok.image_id + 1, tok.vocab_size)
    assert f"more than the model's vocab_size {tok.vocab_size - 1}" in tok.model_mismatch(
        tok.image_id, tok.vocab_size - 1)
