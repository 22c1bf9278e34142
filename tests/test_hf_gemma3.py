"""A tiny random `Gemma3ForConditionalGeneration` directory end to end: `cxrtrek import-hf` (no flags),
a few train steps from the import with `make_train_step`, a staged chain with `run_chain`, `cxrtrek
export-hf`, and the exported PyTorch model's greedy answers equal to the JAX chain's."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Gemma3ForConditionalGeneration

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding import ChainStudy, DecodeSpec, StepwiseDecoder, Turn, fixed_plan, run_chain, study_turns
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.train import step as ts
from data_pipeline.text.chat_template import CHAT_FORMAT_FILE, ChatFormat, render
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.files.images import load_image, resize_with_pad
from data_pipeline.batches.packing import pad_sequence, stack_rows
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.schema.records import IMAGE_PLACEHOLDER
from data_pipeline.text.sequences import SequenceConfig, build_sequences
from data_pipeline.schema.boxes import MARKUP_TOKENS
from data_pipeline.text.tokenizer import load_tokenizer, train_tokenizer, training_texts
from tests.test_gemma3 import tiny_gemma3
from tests.train_steps import train_steps

# Gemma's control tokens; the tokenizer's own template folds the system prompt into the first user
# turn (as Gemma 3's does), which a ChatFormat cannot express, so the import falls back to the
# special tokens (the known Gemma end-of-turn family).
GEMMA = ChatFormat(bos="<bos>", eos="<eos>", pad="<pad>", image="<image_soft_token>", end_of_turn="<end_of_turn>",
                   system_prefix="<start_of_turn>system\n", user_prefix="<start_of_turn>user\n",
                   assistant_prefix="<start_of_turn>model\n")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
IMAGE_MARKERS = ("<start_of_image>", "<end_of_image>")
SEQ_LEN = 192
BUDGET = 8
TRAIN_STEPS = 3


def _study_images(root, study, size):
    return np.stack([resize_with_pad(load_image(os.path.join(root, p)), size) for p in study.images])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    studies = read_studies(write_phantom_dataset(root, 2, seed=5, config=PhantomConfig(size=64)))
    hf_dir = tmp_path_factory.mktemp("gemma") / "gemma3"
    tokenizer = train_tokenizer(training_texts(studies), 400, fmt=GEMMA, extra_tokens=MARKUP_TOKENS + IMAGE_MARKERS)
    tokenizer.save(hf_dir)
    (hf_dir / CHAT_FORMAT_FILE).unlink()
    config_path = hf_dir / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "chat_template": GEMMA_TEMPLATE}))
    ids = tokenizer.backend.token_to_id
    hf_model = tiny_gemma3(seed=4, vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_id,
                           boi=ids(IMAGE_MARKERS[0]), eoi=ids(IMAGE_MARKERS[1]))
    hf_model.save_pretrained(str(hf_dir))
    return dict(root=root, studies=studies, hf_dir=hf_dir, hf_model=hf_model)


@pytest.mark.slow  # ~50 s; make test keeps Gemma 3's logits vs PyTorch and infer == generate (test_hf_published)
def test_import_train_chain_export_and_pytorch_answers_equal(world, tmp_path, capsys):
    imported = tmp_path / "imported"
    # Role prefixes given as flags train a fixed ChatFormat instead of the tokenizer's own template
    # (tests/test_hf_published.py imports Gemma 3's own template with no flags).
    flags = ["--end-of-turn-token", "<end_of_turn>", "--system-prefix", GEMMA.system_prefix,
             "--user-prefix", GEMMA.user_prefix, "--assistant-prefix", GEMMA.assistant_prefix]
    assert main(["import-hf", str(world["hf_dir"]), "--out", str(imported), "--max-images", "2", *flags]) == 0
    printed = capsys.readouterr().out
    assert "from special tokens and flags; its chat_template was not used" in printed
    tokenizer = load_tokenizer(imported / "tokenizer")
    fmt = tokenizer.format
    assert (fmt.end_of_turn, fmt.assistant_prefix) == ("<end_of_turn>", "<start_of_turn>model\n")
    assert (fmt.image_open, fmt.image_close) == ("\n\n<start_of_image>", "<end_of_image>\n\n")
    cfg = load_checkpoint_model(imported).config
    assert cfg.text.family == "gemma3" and cfg.tokens_per_image == 16

    # A few training steps from the imported weights.
    size = cfg.vision.image_size
    seq_config = SequenceConfig(max_length=SEQ_LEN, tokens_per_image=cfg.tokens_per_image, long_chains="truncate")
    rows, images = [], []
    for study in world["studies"][:2]:
        (sequence,), _ = build_sequences(study, tokenizer, seq_config)
        row = pad_sequence(sequence, SEQ_LEN, cfg.max_images, tokenizer.pad_id)
        slots = np.zeros((cfg.max_images, size, size), np.float32)
        for slot, (_, index) in enumerate(row.image_sources):
            slots[slot] = _study_images(world["root"], study, size)[index]
        rows.append(row)
        images.append(slots)
    batch = stack_rows(rows, np.stack(images))
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])  # the FSDP + tensor rules
    state, losses, _ = train_steps(imported, cfg, batch, mesh, TRAIN_STEPS)
    assert losses[-1] < losses[0], losses
    q_proj = state.params["text"]["layers"][0]["attn"]["q_proj"]["kernel"]
    assert tuple(q_proj.sharding.spec)[:2] == ("fsdp", "tensor")
    trained = tmp_path / "trained"
    tokenizer.save(trained / "tokenizer")
    checkpointing.save_params_only(trained, jax.device_get(state.params),
                                   model_config=checkpointing.read_metadata(imported)["model_config"],
                                   tokenizer_path="tokenizer")

    # The staged chain on the trained weights: the first image introduced with the first question.
    loaded = load_checkpoint_model(trained)
    spec = DecodeSpec.for_model(cfg, tokenizer, cache_length=512, max_answer_tokens=BUDGET, max_turns=8)
    decoder = StepwiseDecoder(loaded.graphdef, cfg, spec)
    chain_studies = []
    for study in world["studies"][:2]:
        pixels = _study_images(world["root"], study, size)[:1]
        turns = [Turn(t.turn_index, t.stage, t.task_type, t.qtype, t.question.replace(IMAGE_PLACEHOLDER, ""), 1,
                      t.reference) for t in study_turns(study)[:3]]
        chain_studies.append(ChainStudy(study.study_id, pixels, "You read chest X-rays.",
                                        lambda turns=turns: fixed_plan(turns)))
    ours = run_chain(decoder, loaded.state, tokenizer, chain_studies, context="own", max_new_tokens=BUDGET)

    # Export, and the PyTorch model answers every turn with the same tokens.
    exported = tmp_path / "exported"
    assert main(["export-hf", str(trained), "--out", str(exported)]) == 0
    torch_model = Gemma3ForConditionalGeneration.from_pretrained(str(exported)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(exported))
    messages = [{"role": "system", "content": "Sys."}, {"role": "user", "content": f"{fmt.image}\nQ?"},
                {"role": "assistant", "content": "A."}, {"role": "user", "content": "Q2?"}]
    for tokens_per_image in (1, 16):  # given the count, the tokenizer's template expands images itself
        assert hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                tokens_per_image=tokens_per_image) == render(
            messages, fmt, tokens_per_image=tokens_per_image, add_generation_prompt=True)
    # AutoProcessor: the chat template writes one start-of-image per image, the processor expands it.
    processor = AutoProcessor.from_pretrained(str(exported))
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    square = (np.arange(size * size).reshape(size, size) % 251).astype(np.uint8)
    inputs = processor(text=prompt, images=[Image.fromarray(square)], return_tensors="np")
    assert tokenizer.backend.decode(inputs["input_ids"][0].tolist(), skip_special_tokens=False) == render(
        messages, fmt, tokens_per_image=cfg.tokens_per_image, add_generation_prompt=True)
    expected = (resize_with_pad(square.astype(np.float32) / 255, size) - 0.5) / 0.5
    np.testing.assert_allclose(inputs["pixel_values"][0], np.repeat(expected[None], 3, axis=0), atol=1e-5)
    assert inputs["token_type_ids"][0].sum() == cfg.tokens_per_image
    suppress = [tokenizer.image_id, tokenizer.bos_id, tokenizer.pad_id]
    lengths = set()
    for study, results in zip(chain_studies, ours):
        pixels = torch.tensor(np.repeat(study.images[:1, None], 3, axis=1) * 2.0 - 1.0)
        ids = tokenizer.encode_chat([{"role": "system", "content": study.system_prompt}]).ids.tolist()
        for k, (turn, result) in enumerate(zip(study.plan(), results, strict=True)):
            question = (fmt.image + "\n" if k == 0 else "") + turn.question
            ids += tokenizer.encode_chat([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokens_per_image=cfg.tokens_per_image).ids[1:].tolist()
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                out = torch_model.generate(input_ids=input_ids, pixel_values=pixels,
                                           token_type_ids=(input_ids == tokenizer.image_id).long(), do_sample=False,
                                           max_new_tokens=BUDGET - 1, eos_token_id=tokenizer.end_of_turn_id,
                                           pad_token_id=tokenizer.pad_id, suppress_tokens=suppress)
            generated = out[0, len(ids):].tolist()
            if generated[-1:] != [tokenizer.end_of_turn_id]:
                generated.append(tokenizer.end_of_turn_id)  # the chain closes a turn that ran out of budget
            assert list(result.answer_tokens) == generated[:-1], (study.study_id, turn.turn_index)
            lengths.add(len(result.answer_tokens))
            ids += generated
    assert max(lengths) > 0


def test_an_unsupported_architecture_is_refused_by_name(tmp_path, capsys):
    """PaliGemma (prefix-LM attention over the whole prompt, an unpooled linear projector with bias,
    image features scaled by 1/sqrt(width)) is not one of the supported architectures."""
    directory = tmp_path / "paligemma"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "paligemma",
                                                       "architectures": ["PaliGemmaForConditionalGeneration"]}))
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'paligemma' is not supported" in err and "'gemma3'" in err and "'llava'" in err
    assert not (tmp_path / "out").exists()
