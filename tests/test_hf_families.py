"""The family table (`cxrtrek_jax.hf.families`) is the one place import, export and the PyTorch loader
look families up: its rows agree with transformers' own classes; `load_torch_model` gives each
family's class; a third, fake family added as one row (a Gemma 3 decoder behind LLaVA's MLP
projector, which neither real family exports) is what `export_checkpoint` writes and
`import_hf_checkpoint` reads; without the row both refuse it, naming the known families."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from transformers import Gemma3ForConditionalGeneration, LlavaForConditionalGeneration, PretrainedConfig

from cxrtrek_jax import hf
from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from cxrtrek_jax.hf import families, gemma3_family, llava_family
from cxrtrek_jax.hf.family_spec import HFFamily
from cxrtrek_jax.hf.tensor_specs import CheckpointLayout, TensorSpec, flatten_tree
from cxrtrek_jax.model import CXRTrekNet, from_dict, get_config, override, to_dict
from cxrtrek_jax.train import checkpointing
from data_pipeline.text.tokenizer import train_tokenizer
from tests.test_gemma3 import tiny_gemma3_config

FAKE_TYPE = "fake_vlm"
TEXTS = ["Is there a pleural effusion? No, the costophrenic angles are sharp.",
         "Describe the heart size. The cardiac silhouette is enlarged."] * 10


class FakeVLMConfig(PretrainedConfig):
    """The fake family's transformers config: our model config as one JSON field."""

    model_type = FAKE_TYPE

    def __init__(self, cxrtrek=None, **kwargs):
        self.cxrtrek = cxrtrek or {}
        super().__init__(**kwargs)


def _fake_specs(cfg, vision_head):
    """One "fake.<our parameter path>" tensor per parameter, same layout."""
    abstract = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    flat = flatten_tree(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    return [TensorSpec("fake." + ".".join(map(str, path)), tuple(leaf.shape), path, tuple(leaf.shape), "reshape")
            for path, leaf in flat.items()]


def _fake_processor(directory, tokenizer, cfg):
    tokenizer.save(directory, model_max_length=cfg.text.max_positions)


FAKE = HFFamily(
    name="Fake VLM", model_types=(FAKE_TYPE,), config_class=f"{__name__}:FakeVLMConfig",
    model_class="transformers:PreTrainedModel",  # no PyTorch model: load_torch_model is not tried on it
    architecture="SigLIP + MLP projector + Gemma 3 decoder", text_family="gemma3", projector_kind="mlp",
    to_hf_config=lambda cfg, **ids: FakeVLMConfig(cxrtrek=to_dict(cfg), **ids),
    from_hf_config=lambda c, *, max_images, dtype: dataclasses.replace(from_dict(c.cxrtrek), max_images=max_images,
                                                                      dtype=dtype),
    tensor_specs=_fake_specs, check_export=lambda tokenizer, cfg: {}, write_processor=_fake_processor,
    layout=CheckpointLayout(aliases=(("model.fake.", "fake."),), module_prefixes=(("fake.", "model."),),
                            embed_name="fake.text.embed.embedding", head_name="fake.text.lm_head.kernel"),
)


@pytest.fixture
def with_fake(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, FAKE))


@pytest.fixture(scope="module")
def mixed_checkpoint(tmp_path_factory):
    """(checkpoint dir, its config, its parameters): a tiny model with a Gemma 3 decoder and an MLP projector."""
    tokenizer = train_tokenizer(TEXTS, 320, min_frequency=1)
    cfg = override(get_config("tiny"), {
        "text.family": "gemma3", "text.mlp_activation": "gelu_pytorch_tanh",
        "text.bidirectional_image_attention": True, "text.vocab_size": tokenizer.vocab_size,
        "image_token_id": tokenizer.image_id, "max_images": 2})
    params = nnx.to_pure_dict(nnx.state(CXRTrekNet(cfg, rngs=nnx.Rngs(3)), nnx.Param))
    ckpt = tmp_path_factory.mktemp("mixed") / "ckpt"
    checkpointing.save_params_only(ckpt, params, model_config=to_dict(cfg), tokenizer_path="tokenizer")
    tokenizer.save(ckpt / "tokenizer")
    return ckpt, cfg, params


def test_every_row_names_transformers_classes_of_its_model_type():
    """Each family's config class declares (in transformers) the model_type the family reads, its model
    class takes that config; no model_type or (text.family, projector.kind) pair is in two rows."""
    types = [t for family in families.FAMILIES for t in family.model_types]
    pairs = [(family.text_family, family.projector_kind) for family in families.FAMILIES]
    assert types == ["llava", "gemma3"] and pairs == [("llama", "mlp"), ("gemma3", "gemma3")]
    for family in families.FAMILIES:
        config_class, model_class = family.hf_class(family.config_class), family.hf_class(family.model_class)
        assert config_class.model_type == family.model_types[0]
        assert model_class.config_class is config_class


def test_presets_are_exported_by_their_family():
    assert families.family_for_config(get_config("tiny")).model_class == "LlavaForConditionalGeneration"
    assert families.family_for_config(get_config("medgemma-4b")).model_class == "Gemma3ForConditionalGeneration"


@pytest.mark.parametrize("family, cfg", [
    ("llava", get_config("tiny")),
    ("gemma3", gemma3_family.from_hf_config(tiny_gemma3_config(), max_images=1)),
])
def test_load_torch_model_gives_the_class_of_the_family(family, cfg, tmp_path):
    params = nnx.state(CXRTrekNet(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    hf.save_hf_checkpoint(params, cfg, str(tmp_path))
    model = hf.load_torch_model(tmp_path)
    expected = {"llava": LlavaForConditionalGeneration, "gemma3": Gemma3ForConditionalGeneration}[family]
    assert type(model) is expected and not model.training
    written = load_file(str(tmp_path / "model.safetensors"))
    state = model.state_dict()
    name = "language_model.model.layers.1.self_attn.q_proj.weight"  # one Linear weight, as our spec names it
    torch_name = [k for k in state if k.endswith("language_model.layers.1.self_attn.q_proj.weight")]
    assert len(torch_name) == 1
    np.testing.assert_array_equal(state[torch_name[0]].numpy(), written[name])


def test_load_torch_model_never_unpickles(tmp_path):
    llava_family.to_hf_config(get_config("tiny")).to_json_file(str(tmp_path / "config.json"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")  # unpickling it would raise UnpicklingError
    with pytest.raises(OSError, match="model.safetensors"):
        hf.load_torch_model(tmp_path)


def test_an_unknown_model_type_is_refused_naming_the_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    for load in (hf.load_hf_checkpoint, hf.load_torch_model):
        with pytest.raises(hf.HFConfigError) as err:
            load(str(tmp_path))
        message = str(err.value)
        assert "config.json: model_type 'qwen2_vl' is not supported" in message
        assert "'llava' (LlavaForConditionalGeneration: SigLIP or CLIP + Llama)" in message
        assert "'gemma3' (Gemma3ForConditionalGeneration: Gemma 3, MedGemma)" in message


def test_a_config_no_family_exports_is_refused_naming_the_families(mixed_checkpoint, tmp_path):
    ckpt, cfg, params = mixed_checkpoint
    with pytest.raises(hf.HFConfigError, match="no Hugging Face family exports text.family 'gemma3' with "
                                               "projector.kind 'mlp'.*LLaVA.*Gemma 3"):
        hf.save_hf_checkpoint(params, cfg, str(tmp_path / "direct"))
    assert main(["export-hf", str(ckpt), "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()


def test_a_third_family_is_one_row_for_export_and_import(mixed_checkpoint, with_fake, tmp_path):
    ckpt, cfg, params = mixed_checkpoint
    assert families.family_for_config(cfg) is FAKE
    out = tmp_path / "fake"
    result = hf.export_checkpoint(ckpt, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == FAKE_TYPE
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= set(result.files)
    tensors = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(tensors["fake.text.layers.1.attn.q_proj.kernel"],
                                  params["text"]["layers"][1]["attn"]["q_proj"]["kernel"])
    assert len(tensors) == len(flatten_tree(params))

    imported = tmp_path / "imported"
    hf.import_hf_checkpoint(out, imported, max_images=cfg.max_images)
    loaded = load_checkpoint_model(imported)
    assert loaded.config == cfg
    ours = flatten_tree(nnx.to_pure_dict(nnx.state(loaded.model(), nnx.Param)))
    for path, value in flatten_tree(params).items():
        np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value), err_msg=str(path))

    # The family's layout reads its other spelling ("model.fake.*") too.
    renamed = {("model." + k if k.startswith("fake.text") else k): v for k, v in tensors.items()}
    state = hf.from_hf_tensors(renamed, cfg)
    np.testing.assert_array_equal(np.asarray(nnx.to_pure_dict(state)["text"]["final_norm"]["scale"]),
                                  params["text"]["final_norm"]["scale"])


def test_without_its_row_the_third_family_is_refused_on_import(mixed_checkpoint, monkeypatch, tmp_path, capsys):
    ckpt, cfg, _ = mixed_checkpoint
    out = tmp_path / "fake"
    with monkeypatch.context() as patch:
        patch.setattr(families, "FAMILIES", (*families.FAMILIES, FAKE))
        hf.export_checkpoint(ckpt, out)
    assert main(["import-hf", str(out), "--out", str(tmp_path / "imported")]) == 2
    err = capsys.readouterr().err
    assert f"model_type '{FAKE_TYPE}' is not supported" in err and "'llava'" in err and "'gemma3'" in err
    assert not (tmp_path / "imported").exists()
    with pytest.raises(hf.HFConfigError, match=f"'{FAKE_TYPE}' is not supported"):
        hf.load_torch_model(out)
