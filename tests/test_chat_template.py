"""The one chat template: Python `render`, the Jinja string, ChatFormat files and message checks."""

import json

import pytest

from data_pipeline.chat_template import (
    CHAT_FORMAT_FILE,
    ChatFormat,
    as_messages,
    jinja_template,
    render,
)
from data_pipeline.records import Message
from data_pipeline.tokenizer import train_tokenizer

MESSAGES = [
    {"role": "system", "content": "Read the film."},
    {"role": "user", "content": "<image>\n<image>\nWhich view is this?"},
    {"role": "assistant", "content": "PA view."},
    {"role": "user", "content": "Any effusion?"},
    {"role": "assistant", "content": "<|ref|> left base <|/ref|> <|box|>(1.0, 2.0), (3.0, 4.0)<|/box|>"},
]

# A foreign-style format: multi-character prefixes with newlines and quotes, to exercise escaping.
CHATML = ChatFormat(
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    image="<|image|>",
    end_of_turn="<|im_end|>\n",
    system_prefix='<|im_start|>system "x"\n',
    user_prefix="<|im_start|>user\n",
    assistant_prefix="<|im_start|>assistant\n",
)
# llava-1.5 / Vicuna: no system prefix, user and system turns closed by a space, answers by "</s>" (= eos).
VICUNA = ChatFormat(bos="<s>", eos="</s>", pad="<unk>", image="<image>", end_of_turn="</s>", system_prefix="",
                    user_prefix="USER: ", assistant_prefix="ASSISTANT: ", system_end=" ", user_end=" ")
# Gemma 3's image expansion around its soft image token.
GEMMA_IMAGES = ChatFormat(bos="<bos>", eos="<eos>", pad="<pad>", image="<image_soft_token>",
                          end_of_turn="<end_of_turn>", system_prefix="<start_of_turn>system\n",
                          user_prefix="<start_of_turn>user\n", assistant_prefix="<start_of_turn>model\n",
                          image_open="\n\n<start_of_image>", image_close="<end_of_image>\n\n")


def test_render_exact_layout():
    text = render(MESSAGES)
    assert text == (
        "<|bos|><|system|>Read the film.<|end|>"
        "<|user|><image>\n<image>\nWhich view is this?<|end|>"
        "<|assistant|>PA view.<|end|>"
        "<|user|>Any effusion?<|end|>"
        "<|assistant|><|ref|> left base <|/ref|> <|box|>(1.0, 2.0), (3.0, 4.0)<|/box|><|end|>"
    )


def test_render_expands_images_and_adds_generation_prompt():
    text = render(MESSAGES[:2], tokens_per_image=3, add_generation_prompt=True)
    assert text.count("<image>") == 6
    assert text.endswith("Which view is this?<|end|><|assistant|>")
    with pytest.raises(ValueError, match="tokens_per_image"):
        render(MESSAGES, tokens_per_image=0)


def test_render_accepts_message_records():
    records = [Message(m["role"], m["content"]) for m in MESSAGES]
    assert render(records) == render(MESSAGES)


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory):
    """(format, HF tokenizer) for the CXRTrek format and the ChatML-style one."""
    import transformers

    texts = [m["content"] for m in MESSAGES] * 3
    out = []
    for fmt in (ChatFormat(), CHATML, VICUNA, GEMMA_IMAGES):
        directory = tmp_path_factory.mktemp("tok")
        train_tokenizer(texts, 300, fmt=fmt).save(directory)
        out.append((fmt, transformers.AutoTokenizer.from_pretrained(str(directory))))
    return out


@pytest.mark.parametrize("tokens_per_image", [1, 4])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_jinja_template_renders_like_python(hf_tokenizers, tokens_per_image, add_generation_prompt):
    for fmt, hf in hf_tokenizers:
        messages = [dict(m, content=m["content"].replace("<image>", fmt.image)) for m in MESSAGES]
        ours = render(messages, fmt, tokens_per_image=tokens_per_image, add_generation_prompt=add_generation_prompt)
        theirs = hf.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            tokens_per_image=tokens_per_image,
        )
        assert theirs == ours


def test_jinja_template_defaults_to_one_token_per_image(hf_tokenizers):
    fmt, hf = hf_tokenizers[0]
    assert hf.apply_chat_template(MESSAGES, tokenize=False) == render(MESSAGES, fmt)


def test_jinja_template_rejects_unknown_role(hf_tokenizers):
    _, hf = hf_tokenizers[0]
    with pytest.raises(Exception, match="unknown chat role tool"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_jinja_template_is_a_pure_function_of_the_format():
    assert jinja_template(ChatFormat()) == jinja_template(ChatFormat())
    assert jinja_template(ChatFormat()) != jinja_template(CHATML)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "tool", "content": "x"}], "message 0: unknown role 'tool'"),
        ([{"role": "user"}], "message 0: needs 'role' and 'content'"),
        ([{"role": "user", "content": 3}], "message 0: content must be a string"),
        ([{"role": "system", "content": "a"}, {"role": "user", "content": "q<|end|>"}], r"message 1 \(user\).*'<\|end\|>'"),
        ([{"role": "assistant", "content": "see <image>"}], r"message 0 \(assistant\).*'<image>'"),
        ([{"role": "system", "content": "<image>"}], r"message 0 \(system\)"),
    ],
)
def test_as_messages_errors_name_the_message(messages, match):
    with pytest.raises(ValueError, match=match):
        as_messages(messages, ChatFormat())


def test_chat_format_validation():
    with pytest.raises(ValueError, match="end_of_turn must be a non-empty string"):
        ChatFormat(end_of_turn="")
    with pytest.raises(ValueError, match="distinct"):
        ChatFormat(bos="<|end|>")
    with pytest.raises(ValueError, match="distinct"):
        ChatFormat(pad="<|eos|>")
    with pytest.raises(ValueError, match="system_end must be a string or None"):
        ChatFormat(system_end=3)
    # An answer may end with the end-of-sequence token itself (llava-1.5).
    assert ChatFormat(eos="<|end|>").end_of_turn == ChatFormat(eos="<|end|>").eos


def test_vicuna_layout_and_spans():
    text = render(MESSAGES[:4], VICUNA, tokens_per_image=2, add_generation_prompt=True)
    assert text == ("<s>Read the film. USER: <image><image>\n<image><image>\nWhich view is this? "
                    "ASSISTANT: PA view.</s>USER: Any effusion? ASSISTANT: ")
    tokenizer = train_tokenizer([m["content"] for m in MESSAGES] * 3, 300, fmt=VICUNA)
    encoded = tokenizer.encode_chat(MESSAGES[:3], tokens_per_image=2)
    system, user, answer = encoded.spans
    assert encoded.ids[system.content_end:system.end].tolist() == tokenizer.encode_text(" ")
    assert encoded.ids[answer.content_end:answer.end].tolist() == [tokenizer.eos_id]
    assert tokenizer.decode(encoded.ids[answer.content_start:]) == "PA view."
    assert tokenizer.backend.decode(encoded.ids.tolist(), skip_special_tokens=False) == render(
        MESSAGES[:3], VICUNA, tokens_per_image=2)


def test_gemma_image_wrapping_in_ids():
    tokenizer = train_tokenizer([m["content"] for m in MESSAGES] * 3, 300, fmt=GEMMA_IMAGES,
                                extra_tokens=("<start_of_image>", "<end_of_image>"))
    messages = [{"role": "user", "content": "<image_soft_token>Which view?"}]
    encoded = tokenizer.encode_chat(messages, tokens_per_image=3)
    assert tokenizer.backend.decode(encoded.ids.tolist(), skip_special_tokens=False) == render(
        messages, GEMMA_IMAGES, tokens_per_image=3)
    assert int((encoded.ids == tokenizer.image_id).sum()) == 3
    with pytest.raises(ValueError, match="unknown chat role"):
        ChatFormat().prefix("tool")


def test_chat_format_file_round_trip(tmp_path):
    path = CHATML.save(tmp_path)
    assert path.name == CHAT_FORMAT_FILE
    assert json.loads(path.read_text())["user_prefix"] == "<|im_start|>user\n"
    assert ChatFormat.load(tmp_path) == CHATML


def test_chat_format_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no chat format file"):
        ChatFormat.load(tmp_path)
    (tmp_path / CHAT_FORMAT_FILE).write_text('{"bos": "<s>", "speaker": "x"}')
    with pytest.raises(ValueError, match=r"unknown chat format keys \['speaker'\]"):
        ChatFormat.load(tmp_path)
    (tmp_path / CHAT_FORMAT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ChatFormat.load(tmp_path)
