"""`cxrtrek import-hf`: a tiny random LLaVA directory becomes a checkpoint that decoding loads;
round trip through export-hf; refusals naming the tensor, the pickle file or the missing token."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.hf import importer as hf_import
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from data_pipeline.text.chat_template import CHAT_FORMAT_FILE, ChatFormat
from data_pipeline.text.tokenizer import load_tokenizer, train_tokenizer

IMAGE_SIZE, PATCH = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
TEXTS = ["Is there a pleural effusion? No, the costophrenic angles are sharp.",
         "Describe the heart size. The cardiac silhouette is enlarged."] * 10
CHATML = ChatFormat(bos="<s>", eos="</s>", pad="<pad>", image="<image>", end_of_turn="<|im_end|>",
                    system_prefix="<|im_start|>system\n", user_prefix="<|im_start|>user\n",
                    assistant_prefix="<|im_start|>assistant\n")


def foreign_tokenizer(directory, fmt=CHATML):
    """A Hugging Face tokenizer directory without our chat format file."""
    tokenizer = train_tokenizer(TEXTS, 320, fmt=fmt, min_frequency=1)
    tokenizer.save(directory)
    (directory / CHAT_FORMAT_FILE).unlink()
    return tokenizer


def tiny_llava(vocab_size, image_token_id, seed=0):
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False,
                                tie_last_hidden_states=True)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         image_seq_length=TOKENS_PER_IMAGE)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" not in name else 0.2))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(directory, torch model, tokenizer): a random tiny LLaVA saved with a ChatML-style tokenizer."""
    directory = tmp_path_factory.mktemp("hf") / "llava"
    directory.mkdir()
    tokenizer = foreign_tokenizer(directory)
    model = tiny_llava(tokenizer.vocab_size, tokenizer.image_id)
    model.save_pretrained(str(directory))
    return directory, model, tokenizer


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "imported"
    assert main(["import-hf", str(hf_dir[0]), "--out", str(out), "--max-images", "2"]) == 0
    return out


def _state_dict(model):
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------

def test_decoding_loads_the_import_and_matches_pytorch(hf_dir, imported):
    _, hf_model, tokenizer = hf_dir
    loaded = load_checkpoint_model(imported)
    assert loaded.config.max_images == 2 and loaded.config.image_token_id == tokenizer.image_id
    assert loaded.tokenizer_dir == imported / "tokenizer"
    # Its tokenizer's own template (ours for CHATML, here a foreign file) renders the conversations,
    # token for token as the format it was written from.
    ours = load_tokenizer(loaded.tokenizer_dir)
    assert ours.template.source == "tokenizer_config.json" and ours.format.end_of_turn == CHATML.end_of_turn
    chat = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "<image>\nIs there a pleural effusion?"},
            {"role": "assistant", "content": "No, the costophrenic angles are sharp."}]
    np.testing.assert_array_equal(ours.encode_chat(chat, tokens_per_image=3).ids,
                                  tokenizer.encode_chat(chat, tokens_per_image=3).ids)
    model = nnx.merge(loaded.graphdef, loaded.state)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tokenizer.image_id, (1, 30)).astype(np.int32)
    tokens[0, 3:3 + TOKENS_PER_IMAGE] = tokenizer.image_id
    image = rng.random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    images = np.zeros((1, 2, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    images[0, 0] = image
    ours = model(jnp.asarray(tokens), jnp.asarray(images), jnp.asarray([[True, False]]), None,
                 jnp.ones_like(tokens))[0]
    pixels = torch.tensor(np.repeat(image[None, None], 3, axis=1) * 2.0 - 1.0)
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(tokens).long(), pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


def test_training_can_load_the_import_sharded(imported):
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    params = checkpointing.load_params(imported, mesh=mesh)
    kernel = jax.tree.leaves(params["text"]["layers"])[0]
    assert kernel.sharding.mesh.shape == mesh.shape
    metadata = checkpointing.read_metadata(imported)
    assert metadata["step"] == 0 and metadata["tokenizer_path"] == "tokenizer"
    assert metadata["logical_axis_names"]["text/embed/embedding"] == ["vocab", "embed"]


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------

def test_round_trip_gives_identical_tensors(hf_dir, imported, tmp_path):
    _, hf_model, _ = hf_dir
    out = tmp_path / "exported"
    assert main(["export-hf", str(imported), "--out", str(out)]) == 0
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(out))
    original, again = _state_dict(hf_model), _state_dict(reloaded)
    assert original.keys() == again.keys()
    for name in original:
        assert torch.equal(original[name], again[name]), name
    # Our export carries the chat format, so importing it again needs no flags.
    assert main(["import-hf", str(out), "--out", str(tmp_path / "again")]) == 0
    again = load_tokenizer(tmp_path / "again" / "tokenizer")
    assert again.template == load_tokenizer(imported / "tokenizer").template


def test_sharded_export_writes_an_index_and_reloads(hf_dir, imported, tmp_path):
    _, hf_model, _ = hf_dir
    out = tmp_path / "sharded"
    assert main(["export-hf", str(imported), "--out", str(out), "--max-shard-size", "50KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (out / "model.safetensors").exists()
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(out))
    original = _state_dict(hf_model)
    for name, tensor in _state_dict(reloaded).items():
        assert torch.equal(original[name], tensor), name
    # A sharded directory imports too.
    assert main(["import-hf", str(out), "--out", str(tmp_path / "from_shards")]) == 0
    assert load_checkpoint_model(tmp_path / "from_shards").config.text == load_checkpoint_model(imported).config.text


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------

def _copy_with_tensors(hf_dir, tmp_path, edit):
    directory = tmp_path / "edited"
    shutil.copytree(hf_dir, directory)
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _name(tensors, fragment):
    return next(name for name in tensors if fragment in name)


def _drop(tensors):
    del tensors[_name(tensors, "layers.1.mlp.up_proj")]


def _add(tensors):
    tensors["model.language_model.layers.0.mlp.extra_proj.weight"] = np.zeros((4, 4), np.float32)


def _reshape(tensors):
    name = _name(tensors, "multi_modal_projector.linear_2.weight")
    tensors[name] = tensors[name][:, :-1].copy()


@pytest.mark.parametrize("edit, expected", [
    (_drop, ["missing", "layers.1.mlp.up_proj.weight"]),
    (_add, ["unexpected", "extra_proj"]),
    (_reshape, ["misshapen", "multi_modal_projector.linear_2.weight"]),
], ids=["missing", "extra", "misshapen"])
def test_refuses_a_tensor_that_does_not_fit(hf_dir, tmp_path, capsys, edit, expected):
    directory = _copy_with_tensors(hf_dir[0], tmp_path, edit)
    out = tmp_path / "out"
    assert main(["import-hf", str(directory), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in expected), err
    assert not out.exists()


def test_refuses_a_pickle_checkpoint(hf_dir, tmp_path, capsys):
    directory = tmp_path / "pickled"
    shutil.copytree(hf_dir[0], directory)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not-to-be-unpickled.")
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "safetensors" in err and "Convert" in err


def _with_tokenizer(hf_dir, tmp_path, fmt):
    directory = tmp_path / "retokenized"
    shutil.copytree(hf_dir, directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink()
    foreign_tokenizer(directory, fmt)
    return directory


def test_the_image_token_comes_from_the_model_config_or_the_flag(hf_dir, tmp_path, capsys):
    fmt = ChatFormat(**{**CHATML.to_dict(), "image": "<img>"})
    directory = _with_tokenizer(hf_dir[0], tmp_path, fmt)
    # config.json's image_token_index names "<img>" ...
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "out")]) == 0
    assert load_tokenizer(tmp_path / "out" / "tokenizer").format.image == "<img>"
    # ... without it, a tokenizer with no known image token needs the flag.
    (directory / "config.json").unlink()
    with pytest.raises(hf_import.HFImportError, match="image.*--image-token"):
        hf_import.derive_chat_format(directory)
    assert hf_import.derive_chat_format(directory, {"image": "<img>"}).image == "<img>"


def _drop_chat_template(directory):
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))


def test_a_tokenizer_without_end_of_turn_needs_the_flags(hf_dir, tmp_path, capsys):
    fmt = ChatFormat(bos="<s>", eos="</s>", pad="<pad>", image="<image>", end_of_turn="<|eot|>",
                     system_prefix="<|sys|>", user_prefix="<|usr|>", assistant_prefix="<|bot|>")
    directory = _with_tokenizer(hf_dir[0], tmp_path, fmt)
    # Its own chat_template is kept, and closes answers with the end-of-turn token ...
    assert hf_import.derive_chat_format(directory).end_of_turn == "<|eot|>"
    # ... without one, an unknown end-of-turn token needs the flags.
    _drop_chat_template(directory)
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "end_of_turn" in err and "--end-of-turn-token" in err and "no chat_template" in err
    flags = ["--end-of-turn-token", "<|eot|>", "--system-prefix", "<|sys|>", "--user-prefix", "<|usr|>",
             "--assistant-prefix", "<|bot|>"]
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "out"), *flags]) == 0
    assert load_tokenizer(tmp_path / "out" / "tokenizer").format == fmt


def test_a_flag_that_is_not_a_token_is_refused(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["import-hf", str(hf_dir[0]), "--out", str(out), "--pad-token", "<nope>"]) == 2
    assert "<nope>" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_a_non_empty_output_directory(hf_dir, tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert main(["import-hf", str(hf_dir[0]), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_derive_chat_format_prefers_the_chat_format_file(hf_dir, tmp_path):
    directory = tmp_path / "ours"
    shutil.copytree(hf_dir[0], directory)
    fmt = ChatFormat(**{**CHATML.to_dict(), "pad": "</s>", "eos": "<pad>"})
    fmt.save(directory)
    assert hf_import.derive_chat_format(directory) == fmt
    assert hf_import.derive_chat_format(directory, {"pad": "<pad>", "eos": "</s>"}) == CHATML
