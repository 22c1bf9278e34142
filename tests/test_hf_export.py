"""`cxrtrek export-hf`: a trained tiny model answers identically in transformers; processor parity;
LoRA merged and as a PEFT adapter; sharding, dtype and refusals."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.hf import exporter as hf_export
from cxrtrek_jax.hf import llava_family
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model, split_for_decoding
from cxrtrek_jax.model import CXRTrekNet, LoraConfig, get_config, override, to_dict
from data_pipeline.text.chat_template import render
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.files.images import load_image, resize_with_pad
from data_pipeline.batches.packing import pad_sequence, stack_rows
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.text.sequences import SequenceConfig, build_sequences, system_prompt_of
from data_pipeline.text.tokenizer import train_tokenizer, training_texts
from tests.train_steps import train_steps

SEQ_LEN = 320
TRAIN_STEPS = 40
NEW_TOKENS = 16


# ---------------------------------------------------------------------------
# A tiny model trained from scratch on phantom studies
# ---------------------------------------------------------------------------

def _study_images(root, study, size):
    return np.stack([resize_with_pad(load_image(os.path.join(root, path)), size) for path in study.images])


def _training_batch(root, studies, tokenizer, cfg):
    seq_config = SequenceConfig(max_length=SEQ_LEN, tokens_per_image=cfg.tokens_per_image, long_chains="truncate")
    rows, images = [], []
    for study in studies:
        (sequence,), _ = build_sequences(study, tokenizer, seq_config)
        row = pad_sequence(sequence, SEQ_LEN, cfg.max_images, tokenizer.pad_id)
        rows.append(row)
        slots = np.zeros((cfg.max_images, cfg.vision.image_size, cfg.vision.image_size), np.float32)
        study_images = _study_images(root, study, cfg.vision.image_size)
        for slot, (_, index) in enumerate(row.image_sources):
            slots[slot] = study_images[index]
        images.append(slots)
    return stack_rows(rows, np.stack(images))


def _host_params_of(abstract_params, seed=0):
    """Random parameters made on the host (no initialiser to compile) for a tree of shapes:
    norms at 1, others N(0, 1 / fan_in) (LoRA `b` included, so adapters are non-zero)."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(x.shape, np.float32)
        fan_in = x.shape[0] if len(x.shape) > 1 else 1
        return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, abstract_params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint dir, phantom root, studies, tokenizer, losses) of a tiny model trained from scratch."""
    root = tmp_path_factory.mktemp("phantom")
    studies = read_studies(write_phantom_dataset(root, 4, seed=3, config=PhantomConfig(size=64)))
    tokenizer = train_tokenizer(training_texts(studies), 400)
    cfg = override(get_config("tiny"), {"text.vocab_size": tokenizer.vocab_size,
                                        "image_token_id": tokenizer.image_id, "max_images": 4})
    batch = _training_batch(root, studies, tokenizer, cfg)

    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    state, losses, split = train_steps(_host_params_of, cfg, batch, mesh, TRAIN_STEPS, learning_rate=1e-2,
                                       warmup_steps=2)

    ckpt = tmp_path_factory.mktemp("ckpt")
    tokenizer.save(ckpt / "tokenizer")
    with checkpointing.Checkpointer(checkpointing.CheckpointConfig(str(ckpt), async_save=False)) as saver:
        saver.save(TRAIN_STEPS, params=state.params, opt_state=state.opt_state,
                   metadata={"model_config": to_dict(cfg), "tokenizer_path": "tokenizer",
                             "logical_axis_names": checkpointing.flatten_logical_names(split.logical_names)})
    return ckpt, root, studies, tokenizer, losses


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    ckpt = trained[0]
    out = tmp_path_factory.mktemp("hf") / "model"
    assert main(["export-hf", str(ckpt), "--out", str(out)]) == 0
    return out


def test_training_made_the_model_non_random(trained):
    losses = trained[-1]
    assert losses[-1] < 0.25 * losses[0], losses


def test_export_writes_a_loadable_directory(exported):
    names = set(os.listdir(exported))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "processor_config.json", "cxrtrek_chat_format.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    model, info = LlavaForConditionalGeneration.from_pretrained(str(exported), output_loading_info=True)
    assert not any(info.values()), info


def _conversation(study):
    """System, the first turn with its answer, and the second question (images in the first)."""
    first, second = study.items[0], study.items[1]
    question = first.question if "<image>" in first.question else "<image>\n" + first.question
    return [{"role": "system", "content": system_prompt_of(study)},
            {"role": "user", "content": question},
            {"role": "assistant", "content": first.answer},
            {"role": "user", "content": second.question}], first.image_input_count


def _jax_greedy(model, prompt, images, cfg, *, suppress, stop, steps):
    """Greedy ids (up to and including a `stop` id) from full forward passes over a padded buffer."""
    length = len(prompt) + steps
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :len(prompt)] = prompt
    slots = np.zeros((1, cfg.max_images, *images.shape[1:]), np.float32)
    slots[0, :len(images)] = images
    image_mask = np.arange(cfg.max_images)[None] < len(images)

    @nnx.jit
    def next_token(model, tokens, n):
        segment_ids = (jnp.arange(length)[None] < n).astype(jnp.int32)
        logits = model(tokens, slots, image_mask, None, segment_ids)[0][0, n - 1]
        return jnp.argmax(logits.at[jnp.asarray(suppress)].set(-jnp.inf))

    out = []
    for n in range(len(prompt), length):
        token = int(next_token(model, jnp.asarray(tokens), n))
        out.append(token)
        if token in stop:
            break
        tokens[0, n] = token
    return out


def test_transformers_answers_with_the_same_tokens(trained, exported):
    ckpt, root, studies, tokenizer, _ = trained
    loaded = load_checkpoint_model(ckpt)
    model = nnx.merge(loaded.graphdef, loaded.state)
    cfg = loaded.config
    study = studies[0]
    messages, n_images = _conversation(study)
    paths = [os.path.join(root, p) for p in study.images[:n_images]]
    prompt = tokenizer.encode_chat(messages, tokens_per_image=cfg.tokens_per_image,
                                   add_generation_prompt=True).ids.tolist()
    ours_images = np.stack([resize_with_pad(load_image(p), cfg.vision.image_size) for p in paths])
    ours = _jax_greedy(model, prompt, ours_images, cfg, suppress=[tokenizer.image_id],
                       stop={tokenizer.end_of_turn_id, tokenizer.eos_id}, steps=NEW_TOKENS)

    processor = AutoProcessor.from_pretrained(str(exported))
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(exported)).eval()
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == render(messages, tokenizer.format, add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.open(p) for p in paths], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == prompt
    pixels = inputs["pixel_values"].numpy()
    expected = (ours_images[:, None] - cfg.vision.pixel_mean) / cfg.vision.pixel_std
    assert np.abs(pixels - expected).max() <= 2 / 255 + 1e-6
    with torch.no_grad():
        generated = hf_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                      suppress_tokens=[tokenizer.image_id])
    theirs = generated[0, len(prompt):].tolist()
    assert len(ours) >= 8, tokenizer.decode(ours)
    assert theirs == ours, (tokenizer.decode(theirs), tokenizer.decode(ours))
    # The trained model answers the second question as it was taught.
    assert tokenizer.decode(ours).startswith(tokenizer.decode(tokenizer.encode_text(study.items[1].answer))[:8])


def test_tokenizer_files_render_our_chat_template(trained, exported):
    tokenizer = trained[3]
    hf_tokenizer = AutoTokenizer.from_pretrained(str(exported))
    messages = [{"role": "system", "content": "Read the film."}, {"role": "user", "content": "<image>\nAny effusion?"},
                {"role": "assistant", "content": "No."}]
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert list(ids) == tokenizer.encode_chat(messages).ids.tolist()


def test_generation_config_stops_at_end_of_turn(trained, exported):
    tokenizer = trained[3]
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.end_of_turn_id, tokenizer.eos_id]
    config = json.loads((exported / "config.json").read_text())
    assert config["image_token_index"] == tokenizer.image_id


def test_sharded_bfloat16_export_writes_an_index_and_reloads(trained, tmp_path):
    ckpt = trained[0]
    out = tmp_path / "sharded"
    assert main(["export-hf", str(ckpt), "--out", str(out), "--dtype", "bfloat16", "--max-shard-size", "100KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    model, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------

def test_refuses_a_non_empty_output_directory(trained, tmp_path, capsys):
    (tmp_path / "stale.safetensors").write_bytes(b"x")
    assert main(["export-hf", str(trained[0]), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_lora_flags_need_a_lora_checkpoint(trained, tmp_path, capsys):
    assert main(["export-hf", str(trained[0]), "--out", str(tmp_path / "x"), "--merge-lora"]) == 2
    assert "holds no LoRA adapters" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_shard_size_is_refused(trained, tmp_path, capsys):
    assert main(["export-hf", str(trained[0]), "--out", str(tmp_path / "x"), "--max-shard-size", "2 parsecs"]) == 2
    assert "cannot read the size" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("500MiB", 500 * 2**20), ("123", 123),
                                            ("1.5kb", 1500)])
def test_parse_size(text, expected):
    assert hf_export.parse_size(text) == expected


# ---------------------------------------------------------------------------
# Image processor parity
# ---------------------------------------------------------------------------

def _png(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("pixel_mean, pixel_std", [(0.5, 0.5), (0.45, 0.25), (0.0, 1.0)])
def test_image_processor_reproduces_our_preprocessing(tmp_path, pixel_mean, pixel_std):
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    vision = dataclasses.replace(get_config("tiny").vision, pixel_mean=pixel_mean, pixel_std=pixel_std)
    processor = JanusImageProcessorPil(**llava_family.image_processor_options(vision))
    rng = np.random.default_rng(0)
    size = vision.image_size
    for h, w in [(size, size), (100, 300), (301, 97), (64, 48), (33, 31), (512, 512)]:
        yy, xx = np.mgrid[0:h, 0:w]
        for pixels in (rng.integers(0, 256, (h, w), dtype=np.uint8),
                       (127 + 120 * np.sin(xx / 3) * np.cos(yy / 5)).astype(np.uint8)):
            path = _png(tmp_path / f"{h}x{w}.png", pixels)
            ours = (resize_with_pad(load_image(path), size) - pixel_mean) / pixel_std
            theirs = processor(Image.open(path), return_tensors="np")["pixel_values"][0]
            assert theirs.shape == (3, size, size)
            diff = np.abs(theirs - ours[None]).max()
            if (h, w) == (size, size):
                assert diff <= 1e-5
            else:  # PIL's 8-bit resize rounds where ours stays in float: under one grey level.
                assert diff < 1 / 255 / pixel_std, (h, w, diff * 255 * pixel_std)


# ---------------------------------------------------------------------------
# LoRA: merged export equals the unmerged model; PEFT adapter
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_checkpoint(trained, tmp_path_factory):
    """A LoRA checkpoint (random non-zero adapters on the tiny model) sharing the trained tokenizer."""
    ckpt, _, _, tokenizer, _ = trained
    base_cfg = load_checkpoint_model(ckpt).config
    cfg = dataclasses.replace(base_cfg, lora=LoraConfig(targets=r"text\.layers\.\d+\.(attn\.[qo]_proj|mlp\.down_proj)"
                                                        r"|projector\.linear_1", rank=4, alpha=8.0))
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0))), nnx.Param))
    params = _host_params_of(abstract, seed=7)
    out = tmp_path_factory.mktemp("lora_ckpt")
    tokenizer.save(out / "tokenizer")
    checkpointing.save_params_only(out, params, model_config=to_dict(cfg), tokenizer_path="tokenizer")
    return out, cfg, params, tokenizer


def _torch_logits(hf_model, tokens, images):
    pixels = torch.tensor(np.repeat(images[:, None], 3, axis=1) * 2.0 - 1.0)
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(tokens).long(), pixel_values=pixels).logits.numpy()


def _without_lora(tree):
    return {k: _without_lora(v) if isinstance(v, dict) else v for k, v in tree.items() if k != "lora"}


@nnx.jit
def _forward(model, tokens, images, image_mask):
    return model(tokens, images, image_mask, None, jnp.ones_like(tokens))[0]


def test_merged_lora_export_equals_the_unmerged_model(lora_checkpoint, tmp_path):
    ckpt, cfg, params, tokenizer = lora_checkpoint
    out = tmp_path / "merged"
    assert main(["export-hf", str(ckpt), "--out", str(out), "--merge-lora"]) == 0
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, tokenizer.image_id, (1, 40)).astype(np.int32)
    tokens[0, 2:2 + cfg.tokens_per_image] = tokenizer.image_id
    images = rng.random((1, cfg.vision.image_size, cfg.vision.image_size), dtype=np.float32)
    slots = np.zeros((1, cfg.max_images, *images.shape[1:]), np.float32)
    slots[0, 0] = images[0]
    image_mask = np.arange(cfg.max_images)[None] < 1
    model = nnx.merge(*split_for_decoding(cfg, params))
    ours = np.asarray(_forward(model, tokens, slots, image_mask))
    theirs = _torch_logits(hf_model, tokens, images)
    np.testing.assert_allclose(ours, theirs, atol=2e-4 * np.abs(theirs).max(), rtol=0)
    # The adapters change the function: the base weights alone give other logits.
    base = nnx.eval_shape(lambda: CXRTrekNet(dataclasses.replace(cfg, lora=None), rngs=nnx.Rngs(0)))
    nnx.update(base, _without_lora(params))
    assert np.abs(np.asarray(_forward(base, tokens, slots, image_mask)) - ours).max() > 0.1 * np.abs(ours).max()


def test_lora_adapter_export_is_base_plus_scaled_low_rank(lora_checkpoint, tmp_path):
    ckpt, cfg, _, _ = lora_checkpoint
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    assert main(["export-hf", str(ckpt), "--out", str(merged_dir), "--merge-lora"]) == 0
    assert main(["export-hf", str(ckpt), "--out", str(adapter_dir), "--lora-adapter"]) == 0
    adapter_config = json.loads((adapter_dir / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    scale = adapter_config["lora_alpha"] / adapter_config["r"]
    adapter = load_file(str(adapter_dir / "lora_adapter" / "adapter_model.safetensors"))
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(adapter_dir))
    base = {name: p.detach().numpy() for name, p in hf_model.named_parameters()}
    merged = {name: p.detach().numpy()
              for name, p in LlavaForConditionalGeneration.from_pretrained(str(merged_dir)).named_parameters()}
    modules = dict(hf_model.named_modules())
    targets = adapter_config["target_modules"]
    assert len(targets) == 2 * cfg.text.num_layers + cfg.text.num_layers + 1
    assert len(adapter) == 2 * len(targets)
    for module in targets:
        assert isinstance(modules[module], torch.nn.Linear), module
        a = adapter[f"base_model.model.{module}.lora_A.weight"]
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        weight = f"{module}.weight"
        assert a.shape == (4, base[weight].shape[1]) and b.shape == (base[weight].shape[0], 4)
        np.testing.assert_allclose(base[weight] + scale * b @ a, merged[weight], atol=1e-5, rtol=0)
    untouched = [name for name in base if name.removesuffix(".weight") not in targets]
    for name in untouched:
        np.testing.assert_array_equal(base[name], merged[name])


def test_lora_checkpoint_needs_a_lora_flag(lora_checkpoint, tmp_path, capsys):
    assert main(["export-hf", str(lora_checkpoint[0]), "--out", str(tmp_path / "x")]) == 2
    assert "--merge-lora" in capsys.readouterr().err
