"""Pretrained checkpoints exactly as they were trained: tiny random llava-1.5 (CLIP tower, its config.json
layout) and Gemma 3 models saved with their publishers' tokenizer and processor files (templates verbatim, `CLIPImageProcessor` with centre crop,
`Gemma3ImageProcessor`), imported with no flags.

- `cxrtrek infer --image non_square.png --question Q --max-new-tokens 8` answers with the text
  `model.generate` gives (greedy, 8 new tokens) on `processor(images=..., text=apply_chat_template(...))`;
- a 3-step fine-tune of the import, exported, loads with `AutoProcessor` and the Hugging Face class and
  answers our greedy chain (own context, the model's answers in its context) token for token.
"""

import types

import jax
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Gemma3ForConditionalGeneration, LlavaForConditionalGeneration

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding import ChainStudy, DecodeSpec, StepwiseDecoder, Turn, fixed_plan, load_study_images, run_chain
from cxrtrek_jax.decoding.model_loading import image_processing_of, load_checkpoint_model
from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.train import step as ts
from data_pipeline.batches.packing import pad_sequence, stack_rows
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.sequences import SequenceConfig, build_sequences
from data_pipeline.text.tokenizer import load_tokenizer
from tests.published_checkpoints import write_gemma3, write_generation_config, write_llava15
from tests.test_gemma3 import tiny_gemma3
from tests.test_hf_llava_clip import llava_15_config, random_llava
from tests.train_steps import train_steps

QUESTION = "Is there a pleural effusion?"
SYSTEM = "You read chest radiographs."
TURNS = (("Which view is this?", "PA view."), ("Is there a pleural effusion?", "No, the angles are sharp."),
         ("Describe the heart size.", "The cardiac silhouette is enlarged."))
NEW_TOKENS = 8
CLASSES = {"llava15": LlavaForConditionalGeneration, "gemma3": Gemma3ForConditionalGeneration}


def _published(name, directory):
    if name == "llava15":  # config.json in llava-1.5's layout: a CLIP tower, feature layer -2, strategy "default"
        backend = write_llava15(directory)
        ids = types.SimpleNamespace(image_id=backend.token_to_id("<image>"), pad_id=backend.token_to_id("<pad>"),
                                    vocab_size=backend.get_vocab_size())
        model = random_llava(llava_15_config(ids), seed=3)
    else:
        backend = write_gemma3(directory)
        ids = backend.token_to_id
        model = tiny_gemma3(seed=4, vocab_size=backend.get_vocab_size(), image_token_id=ids("<image_soft_token>"),
                            boi=ids("<start_of_image>"), eoi=ids("<end_of_image>"))
    model.save_pretrained(str(directory))
    write_generation_config(directory, backend)  # the publisher's, not the one save_pretrained wrote
    return backend


BOTH = pytest.mark.parametrize("family", ["llava15", "gemma3"], indirect=True)
# The longer checks (a fine-tune and export, a zero-shot eval: ~1 min each) run in `make test-slow`.
GEMMA_FAST = pytest.mark.parametrize("family", [pytest.param(name, marks=pytest.mark.slow)
                                                for name in ("llava15", "gemma3")], indirect=True)


@pytest.fixture(scope="module")
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = root / "hf"
    _published(request.param, hf_dir)
    imported = root / "imported"
    assert main(["import-hf", str(hf_dir), "--out", str(imported), "--max-images", "2"]) == 0
    picture = (np.add.outer(np.arange(40) * 5, np.arange(61) * 3) % 256).astype(np.uint8)  # 61 x 40: not square
    png = root / "non_square.png"
    Image.fromarray(picture).save(png)
    return dict(name=request.param, hf_dir=hf_dir, imported=imported, png=png)


def _never(tokenizer):
    """The ids the decoder never writes (`DecodeSpec.for_model`): image, bos and pad."""
    return [tokenizer.image_id, tokenizer.bos_id, tokenizer.pad_id]


def _printed_answer(out: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith("    A: "))
    return line[len("    A: "):].split("  [stopped:")[0]


@BOTH
def test_infer_answers_as_generate(family, capsys):
    capsys.readouterr()
    assert main(["infer", "--checkpoint", str(family["imported"]), "--image", str(family["png"]),
                 "--question", QUESTION, "--max-new-tokens", str(NEW_TOKENS)]) == 0
    ours = _printed_answer(capsys.readouterr().out)

    processor = AutoProcessor.from_pretrained(str(family["hf_dir"]))
    model = CLASSES[family["name"]].from_pretrained(str(family["hf_dir"])).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    tokenizer = load_tokenizer(family["imported"] / "tokenizer")
    # bos as the processor's apply_chat_template(tokenize=True) has it: Gemma 3's template writes it
    inputs = processor(images=[Image.open(family["png"])], text=prompt, return_tensors="pt",
                       add_special_tokens=not prompt.startswith(tokenizer.format.bos))
    assert (inputs["input_ids"][0] == tokenizer.bos_id).sum() == 1
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, suppress_tokens=_never(tokenizer))
    theirs = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours == theirs
    assert len(out[0]) - inputs["input_ids"].shape[1] > 1  # it wrote something


def _fine_tune(imported, out, images, tokenizer, steps=3):
    """`steps` train steps of the import on one three-turn study; the params saved under `out`."""
    loaded = load_checkpoint_model(imported)
    cfg = loaded.config
    items = tuple(QAItem(stage=k + 1, task_type="t", qtype="open", image_input_count=1, question=q, answer=a)
                  for k, (q, a) in enumerate(TURNS))
    study = Study(study_id="s", images=("a.png",), items=items)
    length = 192
    config = SequenceConfig(max_length=length, tokens_per_image=cfg.tokens_per_image, long_chains="truncate",
                            system_prompt=SYSTEM)
    (sequence,), _ = build_sequences(study, tokenizer, config)
    row = pad_sequence(sequence, length, cfg.max_images, tokenizer.pad_id)
    slots = np.zeros((cfg.max_images, *images.shape[1:]), np.float32)
    slots[0] = images[0]
    batch = stack_rows([row, row], np.stack([slots, slots]))
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    state, losses, _ = train_steps(imported, cfg, batch, mesh, steps)
    assert losses[-1] < losses[0], losses
    tokenizer.save(out / "tokenizer")
    for name in ("preprocessor_config.json", "processor_config.json"):
        (out / "tokenizer" / name).write_bytes((imported / "tokenizer" / name).read_bytes())
    checkpointing.save_params_only(out, jax.device_get(state.params),
                                   model_config=checkpointing.read_metadata(imported)["model_config"],
                                   tokenizer_path="tokenizer")
    return cfg


@GEMMA_FAST
def test_finetuned_export_reproduces_our_chain(family, tmp_path):
    tokenizer = load_tokenizer(family["imported"] / "tokenizer")
    processing = image_processing_of(family["imported"] / "tokenizer")
    cfg = load_checkpoint_model(family["imported"]).config
    images = load_study_images([family["png"]], cfg.vision.image_size, processing=processing)
    trained = tmp_path / "trained"
    _fine_tune(family["imported"], trained, images, tokenizer)

    budget = 7  # answer tokens, end-of-turn included
    loaded = load_checkpoint_model(trained)
    spec = DecodeSpec.for_model(cfg, tokenizer, cache_length=256, max_answer_tokens=budget, max_turns=8)
    turns = [Turn(k, k + 1, "t", "open", q, 1) for k, (q, _) in enumerate(TURNS)]
    study = ChainStudy("s", images, SYSTEM, lambda: fixed_plan(turns))
    (ours,) = run_chain(StepwiseDecoder(loaded.graphdef, cfg, spec), loaded.state, tokenizer, [study],
                        context="own", max_new_tokens=budget)

    exported = tmp_path / "exported"
    assert main(["export-hf", str(trained), "--out", str(exported)]) == 0
    processor = AutoProcessor.from_pretrained(str(exported))
    model = CLASSES[family["name"]].from_pretrained(str(exported)).eval()
    picture = Image.open(family["png"])
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]
    written = 0
    for k, ((question, _), result) in enumerate(zip(TURNS, ours, strict=True)):
        shown = [{"type": "image", "image": picture}] if k == 0 else []
        messages.append({"role": "user", "content": shown + [{"type": "text", "text": question}]})
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=budget - 1,
                                 suppress_tokens=_never(tokenizer))
        generated = out[0, inputs["input_ids"].shape[1]:].tolist()
        if generated[-1:] == [tokenizer.end_of_turn_id]:
            generated = generated[:-1]
        assert list(result.answer_tokens) == generated, (k, result.answer)
        written += len(generated)
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": processor.decode(generated, skip_special_tokens=True)}]})
    assert written > 0


@GEMMA_FAST
def test_eval_zero_shot_with_the_blind_baseline(family, tmp_path, capsys):
    """`cxrtrek eval --checkpoint IMPORTED` on phantom data: the model as it comes (its own template and
    image processor), scored beside the blind baseline."""
    import json

    from data_pipeline.phantom import PhantomConfig, write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "phantom", 30, seed=2, config=PhantomConfig(size=64))
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(family["imported"]), "--data", str(data), "--out", str(out),
                 "--context", "own", "--max-new-tokens", "3", "--no-meteor", "--bootstrap-resamples", "10",
                 "--no-progress", "--max-studies", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "own" in json.dumps(metrics) and metrics["baselines"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records and all(r["context"] == "own" for r in records)
    assert (out / "baseline_predictions.jsonl").exists()
    # The demo's PyTorch check on this family: the export answers the first question as we do.
    from experiments.demo import _pytorch_check

    exported = tmp_path / "exported"
    assert main(["export-hf", str(family["imported"]), "--out", str(exported)]) == 0
    (row,) = _pytorch_check(exported, family["imported"], data, count=1, new_tokens=4)
    assert row["identical"], row
