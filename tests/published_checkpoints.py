"""Tiny checkpoint directories in the layouts their publishers use, for the import tests.

- llava-1.5 as llava-hf/llava-1.5-7b-hf publishes it: a Llama SentencePiece-style tokenizer.json (BPE with
  byte fallback, "▁" for spaces, bos added by the post-processor), tokenizer_config.json with
  `"tokenizer_class": "LlamaTokenizer"` and no chat template, chat_template.json holding the processor's
  template (verbatim below), processor_config.json (`LlavaProcessor`), preprocessor_config.json
  (`CLIPImageProcessor`: shortest edge, centre crop, CLIP's mean and std), generation_config.json.
- Gemma 3 / MedGemma as google/gemma-3-4b-it publishes it: a Gemma tokenizer.json (BPE with byte fallback,
  spaces as "▁" without a prefix), tokenizer_config.json with the template and the boi/eoi/image tokens
  (`extra_special_tokens`), chat_template.json, processor_config.json (`Gemma3Processor`,
  image_seq_length), preprocessor_config.json (`Gemma3ImageProcessor`: square resize, mean/std 0.5),
  generation_config.json with eos [<eos>, <end_of_turn>].
- ChatML: a plain-string ChatML template in tokenizer_config.json (no processor template), llava model type.

Sizes are tiny (32 px crop, 16 tokens per image); field names and templates are verbatim.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers

# llava-hf/llava-1.5-7b-hf chat_template.json (verbatim).
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# google/gemma-3-4b-it chat template (chat_template.json and tokenizer_config.json, verbatim).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# The ChatML template as Qwen-style tokenizers ship it (strings, no images of its own).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IMAGE_SIZE, PATCH = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
CORPUS = ["You read chest radiographs. Is there a pleural effusion? No, the costophrenic angles are sharp.",
          "Describe the heart size. The cardiac silhouette is enlarged. Which view is this? PA view.",
          "Is the study compared with a prior? Yes, the effusion has increased. What is advised? Follow up.",
          "USER: ASSISTANT: user model system assistant \n\n 0123456789 (,) ?"] * 4
# Llama / Gemma put "▁" for a space; CLIP's mean and std.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sentencepiece_bpe(specials: list[str], bos: str, *, prefix_space: bool, extra: list[str]) -> Tokenizer:
    """A BPE over "▁"-joined text with byte fallback (the <0x..> tokens), as Llama's and Gemma's
    tokenizer.json are; bos added by the post-processor."""
    alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")) | {"▁"})
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    backend = Tokenizer(models.BPE(unk_token=specials[0], byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Prepend("▁")] if prefix_space else []
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    decoders_ = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(decoders_ + ([decoders.Strip(" ", 1, 0)] if prefix_space else []))
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=1, show_progress=False, special_tokens=specials
                                  + byte_tokens, initial_alphabet=alphabet)
    backend.train_from_iterator([t.replace(" ", "▁") for t in CORPUS], trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, backend.token_to_id(bos))])
    return backend


def write_llava15(directory: Path, *, template: str = LLAVA15_TEMPLATE, template_file: str = "chat_template.json",
                  ) -> Tokenizer:
    """The tokenizer and processor files of llava-hf/llava-1.5-7b-hf (no weights); returns the tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    backend = _sentencepiece_bpe(["<unk>", "<s>", "</s>"], "<s>", prefix_space=True, extra=["<image>", "<pad>"])
    backend.save(str(directory / "tokenizer.json"))
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
              "eos_token": "</s>", "legacy": False, "model_max_length": 4096, "pad_token": "<pad>",
              "padding_side": "left", "processor_class": "LlavaProcessor", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer", "trust_remote_code": False, "unk_token": "<unk>",
              "use_default_system_prompt": False}
    if template_file == "tokenizer_config.json":
        config["chat_template"] = template
    else:
        _write(directory / template_file, {"chat_template": template})
    _write(directory / "tokenizer_config.json", config)
    _write(directory / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                                   "unk_token": "<unk>"})
    _write(directory / "processor_config.json", {"image_token": "<image>", "num_additional_image_tokens": 1,
                                                 "patch_size": PATCH, "processor_class": "LlavaProcessor",
                                                 "vision_feature_select_strategy": "default"})
    _write(directory / "preprocessor_config.json", {
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "processor_class": "LlavaProcessor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": IMAGE_SIZE}})
    write_generation_config(directory, backend)
    return backend


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                  "<start_of_image>", "<end_of_image>"]
GEMMA_IMAGE = "<image_soft_token>"


def write_gemma3(directory: Path) -> Tokenizer:
    """The tokenizer and processor files of google/gemma-3-4b-it (no weights); returns the tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    backend = _sentencepiece_bpe(GEMMA_SPECIALS[:4], "<bos>", prefix_space=False,
                                 extra=GEMMA_SPECIALS[4:] + [GEMMA_IMAGE])
    backend.save(str(directory / "tokenizer.json"))
    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": GEMMA_IMAGE}
    _write(directory / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", **extra, "extra_special_tokens": extra, "chat_template": GEMMA3_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_max_length": 4096, "padding_side": "left",
        "processor_class": "Gemma3Processor", "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer"})
    _write(directory / "special_tokens_map.json", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                                   "unk_token": "<unk>", **extra})
    _write(directory / "chat_template.json", {"chat_template": GEMMA3_TEMPLATE})
    _write(directory / "processor_config.json", {"image_seq_length": TOKENS_PER_IMAGE,
                                                 "processor_class": "Gemma3Processor"})
    _write(directory / "preprocessor_config.json", {
        "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": TOKENS_PER_IMAGE, "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}})
    write_generation_config(directory, backend)
    return backend


def write_chatml(directory: Path) -> Tokenizer:
    """A llava-1.5-style directory whose only template is a plain-string ChatML one in tokenizer_config.json."""
    backend = write_llava15(directory, template=CHATML_TEMPLATE, template_file="tokenizer_config.json")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")])
    backend.save(str(directory / "tokenizer.json"))
    return backend


def write_generation_config(directory: Path, backend: Tokenizer) -> None:
    """generation_config.json as the publisher's (write it again after `save_pretrained`, which writes
    the model's own): Gemma 3 stops at <eos> or <end_of_turn> and samples by default; llava at </s>."""
    ids = backend.token_to_id
    if ids("<end_of_turn>") is not None:
        config = {"bos_token_id": ids("<bos>"), "cache_implementation": "hybrid", "do_sample": True,
                  "eos_token_id": [ids("<eos>"), ids("<end_of_turn>")], "pad_token_id": ids("<pad>"), "top_k": 64,
                  "top_p": 0.95}
    else:
        config = {"_from_model_config": True, "bos_token_id": ids("<s>"), "eos_token_id": ids("</s>"),
                  "pad_token_id": ids("<pad>")}
    _write(directory / "generation_config.json", config)
