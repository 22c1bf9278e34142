"""`cxrtrek import-hf`: a local Hugging Face directory of a family in the table (`families`: LLaVA,
Gemma 3 / MedGemma) as a project checkpoint.

Reads config.json, model.safetensors (or shards with
model.safetensors.index.json) and the tokenizer files of `hf_dir`, checks
every tensor against the config (`conversion.load_hf_checkpoint`, with the family
config.json's `model_type` names: one error naming each missing,
unexpected or misshapen tensor; pickle checkpoints such as
pytorch_model.bin are refused, never unpickled) and writes

    <out>/0/params, <out>/0/metadata     a params-only step-0 checkpoint
                                         (`checkpointing.save_params_only`)
    <out>/tokenizer/                     the tokenizer, saved in our format with its
                                         ChatFormat (cxrtrek_chat_format.json)

whose metadata holds the model config and `tokenizer_path: "tokenizer"`, so
training can start from it and decoding loads it.

The `ChatFormat` comes from, in order: the directory's
cxrtrek_chat_format.json (present in our own exports); the tokenizer's own
Jinja `chat_template`, rendered on probe conversations (`template_format`:
the prefixes and turn ends are read off the rendered text, and the derived
format must render the probes exactly as the template does); the tokenizer's
special tokens (bos/eos/pad; pad falls back to unk), its image token
(`image_token` of the tokenizer or processor_config.json, else an added
"<image>" token) and a known end-of-turn family among its added tokens
(`KNOWN_TURN_FORMATS`: ChatML, Llama 3, Gemma, ours), which also fixes the
role prefixes; the text the model family's processor writes around each image
(`HFFamily.chat_image_wrapping`: Gemma 3's start/end-of-image tokens) in either
case; any field given in `overrides` (the command-line flags) wins. A
tokenizer without an image or end-of-turn token, with neither given, is refused
with a message naming the flag to pass. The end-of-turn token may be the
end-of-sequence token (llava-1.5 closes answers with "</s>").
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtrek_jax.hf import conversion, families
from cxrtrek_jax.hf.errors import HFConfigError

__all__ = [
    "KNOWN_TURN_FORMATS",
    "TEMPLATE_FILES",
    "checkpoint_template_source",
    "import_tokenizer",
    "TOKENIZER_SUBDIR",
    "HFImportError",
    "ImportResult",
    "derive_chat_format",
    "import_hf_checkpoint",
]

TOKENIZER_SUBDIR = "tokenizer"
PROCESSOR_CONFIG_FILE = "processor_config.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
# The processor's own files kept with an imported checkpoint that keeps its template (the image
# processor's settings; the processor's image-token settings), for export.
PROCESSOR_FILES = (PREPROCESSOR_CONFIG_FILE, PROCESSOR_CONFIG_FILE)
DEFAULT_IMAGE_TOKEN = "<image>"


@dataclasses.dataclass(frozen=True)
class TurnFormat:
    """An end-of-turn token and the role prefixes used with it ("{role}" is replaced;
    `assistant_role` is how the template names the assistant)."""

    end_of_turn: str
    prefix: str
    assistant_role: str = "assistant"

    def prefixes(self) -> dict[str, str]:
        roles = {"system": "system", "user": "user", "assistant": self.assistant_role}
        return {f"{role}_prefix": self.prefix.replace("{role}", name) for role, name in roles.items()}


KNOWN_TURN_FORMATS = (
    TurnFormat("<|end|>", "<|{role}|>"),  # CXRTrek (and Phi-3)
    TurnFormat("<|im_end|>", "<|im_start|>{role}\n"),  # ChatML (Qwen, ...)
    TurnFormat("<|eot_id|>", "<|start_header_id|>{role}<|end_header_id|>\n\n"),  # Llama 3
    TurnFormat("<end_of_turn>", "<start_of_turn>{role}\n", assistant_role="model"),  # Gemma
)

# ChatFormat field -> command-line flag that sets it.
FORMAT_FLAGS = {
    "bos": "--bos-token",
    "eos": "--eos-token",
    "pad": "--pad-token",
    "image": "--image-token",
    "end_of_turn": "--end-of-turn-token",
    "system_prefix": "--system-prefix",
    "user_prefix": "--user-prefix",
    "assistant_prefix": "--assistant-prefix",
    "system_end": "--system-end",
    "user_end": "--user-end",
}


class HFImportError(ValueError):
    """A Hugging Face directory that cannot be imported; the message says why."""


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """The checkpoint written: its directory, model config, chat format and tokenizer directory."""

    directory: Path
    config: Any
    chat_format: Any
    tokenizer_dir: Path
    chat_format_source: str = ""
    template: Any = None


# ---------------------------------------------------------------------------
# Chat format
# ---------------------------------------------------------------------------

def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer configs: a string or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HFImportError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return data


def _model_config_json(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    return _read_json(path) if path.exists() else {}


def _image_token(hf_dir: Path, hf_tokenizer, added: set[str]) -> str | None:
    candidates = [_token_text(getattr(hf_tokenizer, "image_token", None))]
    processor_config = hf_dir / PROCESSOR_CONFIG_FILE
    if processor_config.exists():
        candidates.append(_token_text(_read_json(processor_config).get("image_token")))
    model_config = _model_config_json(hf_dir)
    image_id = model_config.get("image_token_index", model_config.get("image_token_id"))
    if isinstance(image_id, int):  # the model's own image token
        candidates.append(hf_tokenizer.convert_ids_to_tokens(image_id))
    candidates.append(DEFAULT_IMAGE_TOKEN)
    return next((token for token in candidates if token in added), None)


def _image_wrapping(hf_dir: Path, hf_tokenizer, added: set[str]) -> dict[str, str]:
    """image_open / image_close of the text the family of config.json's `model_type` writes around each
    image's tokens (`HFFamily.chat_image_wrapping`; Gemma 3: "\n\n<start_of_image>" + N image tokens +
    "<end_of_image>\n\n"); nothing for a family that writes none or a directory no family reads."""
    model_config = _model_config_json(hf_dir)
    family = families.find_family(model_config.get("model_type"))
    if family is None or family.chat_image_wrapping is None:
        return {}
    try:
        return family.chat_image_wrapping(model_config, hf_tokenizer, added)
    except HFConfigError as err:
        raise HFImportError(f"{hf_dir}: {err}") from None


def _load_hf_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise HFImportError(f"{hf_dir}: cannot load its tokenizer files: {err}") from err


# Probe contents: plain words that templates neither escape nor trim.
_PROBES = {"system": "CXRTrekProbeSystem", "user": "CXRTrekProbeUserA", "assistant": "CXRTrekProbeAnswerA",
           "user2": "CXRTrekProbeUserB", "assistant2": "CXRTrekProbeAnswerB"}


class TemplateFormatError(ValueError):
    """A chat template that does not follow the prefix / content / turn-end layout of a ChatFormat."""


def _probe_conversations() -> dict[str, tuple[list[dict], bool]]:
    p = _PROBES
    system = {"role": "system", "content": p["system"]}
    first = [{"role": "user", "content": p["user"]}, {"role": "assistant", "content": p["assistant"]},
             {"role": "user", "content": p["user2"]}]
    return {
        "with_system": ([system, *first], False),
        "without_system": (first, False),
        "prompt": ([system, *first], True),
        "two_answers": ([system, *first, {"role": "assistant", "content": p["assistant2"]}], False),
    }


def _between(text: str, start: str | None, end: str | None, what: str) -> str:
    """The text after probe `start` (None: from the beginning) and before probe `end` (None: to the end)."""
    begin = 0
    if start is not None:
        if text.count(start) != 1:
            raise TemplateFormatError(f"the template does not render the {what} content once, verbatim")
        begin = text.index(start) + len(start)
    stop = len(text)
    if end is not None:
        if text.count(end) != 1:
            raise TemplateFormatError(f"the template does not render the {what} content once, verbatim")
        stop = text.index(end)
    if stop < begin:
        raise TemplateFormatError(f"the template reorders the messages ({what})")
    return text[begin:stop]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise TemplateFormatError(f"{what}: {text!r} does not end with {suffix!r}")
    return text[: len(text) - len(suffix)]


def template_format(hf_tokenizer, base: Mapping[str, str | None]):
    """The `ChatFormat` read off the tokenizer's Jinja `chat_template`, with bos/eos/pad/image from
    `base` (and an end_of_turn there, if any, checked against the template's).

    Renders probe conversations with `apply_chat_template`: the text before the first message,
    between messages and after the generation prompt gives bos, each role's prefix and each
    role's turn end; an assistant turn must end with one added token (the end-of-turn token, which
    may be eos). Raises TemplateFormatError when the template has another layout (e.g. the system
    prompt folded into the first user turn, content trimmed or rewritten, a generation prompt unlike
    the assistant prefix), verified by re-rendering every probe with the derived format.
    """
    from data_pipeline.text.chat_template import ChatFormat, render

    if not getattr(hf_tokenizer, "chat_template", None):
        raise TemplateFormatError("the tokenizer has no chat_template")
    p = _PROBES
    rendered = {}
    for name, (messages, generation) in _probe_conversations().items():
        try:
            rendered[name] = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                              add_generation_prompt=generation)
        except Exception as err:  # a template may raise anything (raise_exception, TypeError, ...)
            raise TemplateFormatError(f"the chat template cannot render plain string messages: {err}") from None
        if not isinstance(rendered[name], str):
            raise TemplateFormatError("apply_chat_template did not return text")
    full, bare = rendered["with_system"], rendered["without_system"]
    bos = base.get("bos")
    if not bos or not full.startswith(bos) or not bare.startswith(bos):
        raise TemplateFormatError(f"the template does not begin with the bos token {bos!r}")
    system_prefix = _between(full, None, p["system"], "system")[len(bos):]
    user_prefix = _between(bare, None, p["user"], "user")[len(bos):]
    user_end = _between(full, p["user2"], None, "second user")
    question_to_answer = _between(full, p["user"], p["assistant"], "user/assistant")
    if not question_to_answer.startswith(user_end):
        raise TemplateFormatError("the first user turn does not end like the last one")
    assistant_prefix = question_to_answer[len(user_end):]
    end_of_turn = _strip_suffix(_between(full, p["assistant"], p["user2"], "assistant/user"), user_prefix,
                                "the text between an answer and the next question")
    system_end = _strip_suffix(_between(full, p["system"], p["user"], "system/user"), user_prefix,
                               "the text between the system prompt and the first question")
    generation = rendered["prompt"]
    if not generation.startswith(full) or generation[len(full):] != assistant_prefix:
        raise TemplateFormatError(f"the generation prompt {generation[len(full):]!r} is not the assistant "
                                  f"prefix {assistant_prefix!r} the template writes before answers")
    added = {token.content for token in hf_tokenizer.added_tokens_decoder.values()}
    if end_of_turn not in added:
        raise TemplateFormatError(f"answers end with {end_of_turn!r}, which is not one added token")
    given = base.get("end_of_turn")
    if given and given != end_of_turn:
        raise TemplateFormatError(f"the template ends answers with {end_of_turn!r}, not {given!r}")
    try:
        fmt = ChatFormat(
            bos=bos, eos=base.get("eos"), pad=base.get("pad"), image=base.get("image"), end_of_turn=end_of_turn,
            system_prefix=system_prefix, user_prefix=user_prefix, assistant_prefix=assistant_prefix,
            system_end=None if system_end == end_of_turn else system_end,
            user_end=None if user_end == end_of_turn else user_end)
    except (TypeError, ValueError) as err:
        raise TemplateFormatError(str(err)) from None
    for name, (messages, generation) in _probe_conversations().items():
        try:
            ours = render(messages, fmt, add_generation_prompt=generation)
        except ValueError as err:
            raise TemplateFormatError(f"probe {name!r}: {err}") from None
        if ours != rendered[name]:
            raise TemplateFormatError(f"probe {name!r}: the template renders {rendered[name]!r}, a ChatFormat "
                                      f"with the prefixes and turn ends read off it renders {ours!r}")
    return fmt


# ChatFormat fields a flag may set without leaving the checkpoint's own template (the tokens); the
# role prefixes and turn ends only mean something in a ChatFormat, so giving one replaces the template.
_TEMPLATE_MODE_FLAGS = ("bos", "eos", "pad", "image", "end_of_turn")
# Where transformers finds a checkpoint's chat template, in the order it looks (the processor's files
# first, then the tokenizer's).
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", PROCESSOR_CONFIG_FILE, "tokenizer_config.json")
GENERATION_CONFIG_FILE = "generation_config.json"


def checkpoint_template_source(hf_dir: Path, hf_tokenizer=None) -> tuple[str, str] | None:
    """(Jinja template, the file it came from) of `hf_dir`, looked up where transformers looks
    (`TEMPLATE_FILES`); a named-template dict's "default"; None when it has none."""
    for name in TEMPLATE_FILES:
        path = hf_dir / name
        if not path.exists():
            continue
        if name.endswith(".jinja"):
            return path.read_text(encoding="utf-8"), name
        template = _read_json(path).get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            template = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        if isinstance(template, Mapping):
            template = template.get("default")
        if isinstance(template, str) and template.strip():
            return template, name
    return None


def _stop_tokens(hf_dir: Path, hf_tokenizer) -> list[str]:
    """The tokens generation stops at: generation_config.json's eos_token_id (an id or a list), else
    the tokenizer's eos."""
    path = hf_dir / GENERATION_CONFIG_FILE
    ids = _read_json(path).get("eos_token_id") if path.exists() else None
    ids = [ids] if isinstance(ids, int) else [i for i in (ids or []) if isinstance(i, int)]
    tokens = [hf_tokenizer.convert_ids_to_tokens(i) for i in ids]
    eos = _token_text(hf_tokenizer.eos_token)
    return [t for t in tokens if t] or ([eos] if eos else [])


def _template_mode(hf_dir: Path, hf_tokenizer, found: tuple[str, str], tokens: Mapping[str, str | None],
                   wrapping: Mapping[str, str], added: set[str]):
    """(ChatFormat, source) of a checkpoint rendered through its own template: the format holds only
    the tokens (bos/eos/pad/image, the end-of-turn token decoding stops at, the image wrapping); the
    `CheckpointTemplate` (`_checkpoint_template`) holds the rest."""
    from data_pipeline.text.chat_template import ChatFormat

    source, name = found[0], found[1]
    missing = [f"{field} (pass {FORMAT_FLAGS[field]})" for field in ("bos", "eos", "pad", "image") if not tokens.get(field)]
    if missing:
        raise HFImportError(f"{hf_dir}: its chat template ({name}) is used, but the tokenizer lacks: {', '.join(missing)}")
    template = _checkpoint_template(hf_dir, hf_tokenizer, source, name, tokens["image"], wrapping)
    end_of_turn = tokens.get("end_of_turn") or _answer_end_token(hf_dir, hf_tokenizer, template, added)
    stops = tuple(t for t in _stop_tokens(hf_dir, hf_tokenizer) if t != end_of_turn)
    template = dataclasses.replace(template, stop_tokens=stops)
    try:
        fmt = ChatFormat(bos=tokens["bos"], eos=tokens["eos"], pad=tokens["pad"], image=tokens["image"],
                         end_of_turn=end_of_turn, system_prefix="", user_prefix="", assistant_prefix="",
                         **dict(wrapping))
    except ValueError as err:
        raise HFImportError(f"{hf_dir}: {err}") from err
    return fmt, f"the checkpoint's own chat template ({name})", template


_PROBE_TEXT = "CXRTrekProbeQuestion"
_PROBE_ANSWER = "CXRTrekProbeAnswer"


def _checkpoint_template(hf_dir: Path, hf_tokenizer, source: str, name: str, image: str,
                         wrapping: Mapping[str, str]):
    """The `CheckpointTemplate` of `source`: content style and image marker found by rendering a probe
    (a user turn with one image, an answer); HFImportError naming the file when it renders neither
    content lists nor strings with the image where it belongs."""
    from data_pipeline.text.checkpoint_template import CheckpointTemplate, TemplateError
    from data_pipeline.schema.records import Message

    marker = wrapping.get("image_open", "").strip() or image  # Gemma 3: "<start_of_image>"; llava: "<image>"
    variables = {k: v for k, v in hf_tokenizer.special_tokens_map.items() if isinstance(v, (str, list))}
    probe = [Message("system", "CXRTrekProbeSystem"), Message("user", f"{image}\n{_PROBE_TEXT}"),
             Message("assistant", _PROBE_ANSWER), Message("user", _PROBE_TEXT + "2")]
    problems = []
    for style in ("lists", "strings"):
        template = CheckpointTemplate(source, name, style, marker, variables)
        try:
            rendered = template.render(probe, image_expansion=marker, add_generation_prompt=True, placeholder=image)
        except TemplateError as err:
            problems.append(f"{style}: {err}")
            continue
        text = rendered.text
        if text.count(marker) == 1 and text.count(_PROBE_TEXT) == 2 and "'type'" not in text \
                and text.count(_PROBE_ANSWER) == 1 and text.index(marker) < text.index(_PROBE_TEXT):
            return template
        problems.append(f"{style}: the probe renders as {text!r}")
    raise HFImportError(f"{hf_dir}: its chat template ({name}) renders neither multimodal content lists nor "
                        f"strings with the image marker {marker!r} before the question: {'; '.join(problems)}. "
                        f"Pass {FORMAT_FLAGS['user_prefix']} / {FORMAT_FLAGS['assistant_prefix']} (and the "
                        "other format flags) to train with a fixed format instead")


def _answer_end_token(hf_dir: Path, hf_tokenizer, template, added: set[str]) -> str:
    """The token decoding stops at: the first added token the template writes right after an answer
    (Gemma 3: "<end_of_turn>", ChatML: "<|im_end|>"), else the first stop token of the generation config
    (`_stop_tokens`; llava-1.5: "</s>", which its template never writes: generation stops at the end of
    sequence)."""
    from data_pipeline.schema.records import Message

    text = template.render([Message("user", _PROBE_TEXT), Message("assistant", _PROBE_ANSWER)],
                           image_expansion=template.image_marker).text
    after = text[text.index(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
    written = [token for token in added if token in after]
    if written:
        return min(written, key=lambda token: (after.index(token), -len(token)))
    stops = _stop_tokens(hf_dir, hf_tokenizer)
    if not stops:
        raise HFImportError(f"{hf_dir}: no end-of-sequence token in the tokenizer or {GENERATION_CONFIG_FILE}; "
                            f"pass {FORMAT_FLAGS['end_of_turn']}")
    return stops[0]


def format_summary(fmt) -> str:
    """One line naming every field of a ChatFormat (for `cxrtrek import-hf`)."""
    return ", ".join(f"{name}={value!r}" for name, value in fmt.to_dict().items()
                     if value is not None and (value != "" or name.endswith("prefix")))


def derive_chat_format(hf_dir: str | os.PathLike, overrides: Mapping[str, str | None] | None = None):
    """The `ChatFormat` of the tokenizer in `hf_dir` (module docstring); `overrides` maps
    ChatFormat field names to token strings (None = derive)."""
    return _derive_chat_format(hf_dir, overrides)[0]


def _derive_chat_format(hf_dir, overrides) -> tuple[Any, str, Any]:
    """(ChatFormat, where it came from, the checkpoint's own `CheckpointTemplate` or None)."""
    from data_pipeline.text.chat_template import CHAT_FORMAT_FILE, ChatFormat

    hf_dir = Path(hf_dir)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(FORMAT_FLAGS))
    if unknown:
        raise HFImportError(f"unknown chat format fields {unknown}; known: {sorted(FORMAT_FLAGS)}")
    if (hf_dir / CHAT_FORMAT_FILE).exists():
        try:
            from data_pipeline.text.checkpoint_template import CheckpointTemplate

            template = CheckpointTemplate.load(hf_dir)  # an export of an imported checkpoint keeps its template
            source = CHAT_FORMAT_FILE + (f" and {template.source}" if template is not None else "")
            return dataclasses.replace(ChatFormat.load(hf_dir), **given), source, template
        except ValueError as err:
            raise HFImportError(str(err)) from err

    hf_tokenizer = _load_hf_tokenizer(hf_dir)
    added = {token.content for token in hf_tokenizer.added_tokens_decoder.values()}
    fields: dict[str, str | None] = {
        "bos": _token_text(hf_tokenizer.bos_token),
        "eos": _token_text(hf_tokenizer.eos_token),
        "pad": _token_text(hf_tokenizer.pad_token) or _token_text(hf_tokenizer.unk_token),
        "image": _image_token(hf_dir, hf_tokenizer, added),
    }
    wrapping = _image_wrapping(hf_dir, hf_tokenizer, added)
    found = checkpoint_template_source(hf_dir, hf_tokenizer)
    if found is not None and not set(given) - set(_TEMPLATE_MODE_FLAGS):
        return _template_mode(hf_dir, hf_tokenizer, found, {**fields, **given}, wrapping, added)
    template_problem = None
    if all(fields[name] or given.get(name) for name in ("bos", "eos", "pad", "image")):
        try:
            fmt = template_format(hf_tokenizer, {**fields, **given})
            return dataclasses.replace(fmt, **{**wrapping, **given}), "the tokenizer's chat_template", None
        except TemplateFormatError as err:
            template_problem = str(err)
        except ValueError as err:
            raise HFImportError(f"{hf_dir}: {err}") from err
    end_of_turn = given.get("end_of_turn")
    family = next((f for f in KNOWN_TURN_FORMATS
                   if (f.end_of_turn == end_of_turn if end_of_turn else f.end_of_turn in added)), None)
    fields["end_of_turn"] = family.end_of_turn if family else None
    fields.update(family.prefixes() if family else dict.fromkeys(("system_prefix", "user_prefix",
                                                                 "assistant_prefix")))
    fields.update(dict.fromkeys(("system_end", "user_end")))
    fields.update(wrapping)
    fields.update(given)
    missing = [name for name, value in fields.items() if value is None and name not in ("system_end", "user_end")]
    if missing:
        what = {"image": "an image token", "end_of_turn": "a known end-of-turn token"}
        reasons = ", ".join(f"{name} ({what.get(name, 'no such special token')}; pass {FORMAT_FLAGS[name]})"
                            for name in missing)
        template = f" Its chat_template was not used: {template_problem}." if template_problem else ""
        raise HFImportError(f"{hf_dir}: cannot derive the chat format from the tokenizer: missing {reasons}. "
                            f"Known end-of-turn tokens: {[f.end_of_turn for f in KNOWN_TURN_FORMATS]}.{template}")
    try:
        unused = f"; its chat_template was not used: {template_problem}" if template_problem else ""
        return ChatFormat(**fields), "special tokens" + (" and flags" if given else "") + unused, None
    except ValueError as err:
        raise HFImportError(f"{hf_dir}: {err}") from err


# ---------------------------------------------------------------------------
# The whole import
# ---------------------------------------------------------------------------

def _with_image_processing(hf_dir: Path, config):
    """`config` with its vision tower normalising as the checkpoint's image processor does (per-channel
    mean and std of its preprocessor_config.json), after checking that the processor's settings are
    reproduced (`ImageProcessing`: the file and key named otherwise) and its size is the tower's."""
    from data_pipeline.files.image_processing import ImageProcessing

    path = hf_dir / PREPROCESSOR_CONFIG_FILE
    if not path.exists():
        return config
    try:
        processing = ImageProcessing.from_preprocessor_config(path)
    except ValueError as err:
        raise HFImportError(f"{err} (the image processor's setting is not reproduced; nothing was written)") from None
    if processing.size != config.vision.image_size:
        raise HFImportError(f"{path}: the image processor makes {processing.size}x{processing.size} images, the "
                            f"vision tower of config.json takes {config.vision.image_size}x{config.vision.image_size}")
    vision = dataclasses.replace(config.vision, channel_mean=processing.channel_mean,
                                 channel_std=processing.channel_std)
    return dataclasses.replace(config, vision=vision)


def import_tokenizer(hf_dir: str | os.PathLike, chat_format: Mapping[str, str | None] | None = None):
    """(our tokenizer of `hf_dir`, where its chat format came from): with the checkpoint's own chat
    template when it has one (module docstring), else a `ChatFormat` (our file, flags, special tokens)."""
    hf_dir = Path(hf_dir)
    fmt, source, template = _derive_chat_format(hf_dir, chat_format)
    return _tokenizer(hf_dir, fmt, None, template), source


def _tokenizer(hf_dir: Path, fmt, config, template=None):
    """Our tokenizer of `hf_dir` with `fmt` (and the checkpoint's own template: then the tokenizer as
    transformers builds it, its normaliser and bos handling included), checked against the model config."""
    from data_pipeline.text.tokenizer import CXRTrekTokenizer, load_tokenizer

    try:
        if template is not None:
            backend = _load_hf_tokenizer(hf_dir).backend_tokenizer
            tokenizer = CXRTrekTokenizer(backend, fmt, source=str(hf_dir), template=template)
        else:
            tokenizer = load_tokenizer(hf_dir, fmt)
    except (OSError, ValueError) as err:
        flags = ", ".join(FORMAT_FLAGS.values())
        raise HFImportError(f"{hf_dir}: the tokenizer does not fit the chat format {fmt}: {err} "
                            f"(set the tokens with {flags})") from err
    mismatch = None if config is None else tokenizer.model_mismatch(config.image_token_id, config.vocab_size)
    if mismatch:
        raise HFImportError(f"{hf_dir}: {mismatch} (from config.json)")
    return tokenizer


def import_hf_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_images: int = 4,
                         dtype: str = "float32", chat_format: Mapping[str, str | None] | None = None,
                         ) -> ImportResult:
    """Import the Hugging Face checkpoint of `hf_dir` (any family in the table) into the new
    checkpoint directory `out_dir`.

    max_images / dtype: the model config fields HF configs do not carry.
    chat_format: ChatFormat fields overriding the derived ones. Everything
    is read and checked before anything is written; `out_dir` must be new or empty.
    """
    from flax import nnx

    from cxrtrek_jax.train import checkpointing
    from cxrtrek_jax.model import to_dict
    from cxrtrek_jax.train.step import param_logical_names

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise HFImportError(f"Hugging Face directory {hf_dir} does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HFImportError(f"output directory {out_dir} exists and is not empty; choose a new directory")
    config, state = conversion.load_hf_checkpoint(str(hf_dir), max_images=max_images, dtype=dtype)
    fmt, source, template = _derive_chat_format(hf_dir, chat_format)
    tokenizer = _tokenizer(hf_dir, fmt, config, template)
    if template is not None:
        config = _with_image_processing(hf_dir, config)
    processor_files = {name: _read_json(hf_dir / name) for name in PROCESSOR_FILES if (hf_dir / name).exists()}

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = tokenizer.save(out_dir / TOKENIZER_SUBDIR, model_max_length=config.text.max_positions)
    if template is not None:  # the processor's configuration travels with its template (JSON, verbatim)
        for name, data in processor_files.items():
            (tokenizer_dir / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    checkpointing.save_params_only(
        out_dir,
        nnx.to_pure_dict(state),
        model_config=to_dict(config),
        logical_names=param_logical_names(state),
        tokenizer_path=TOKENIZER_SUBDIR,
        extra_metadata={"imported_from": str(hf_dir.resolve())},
    )
    return ImportResult(out_dir, config, fmt, tokenizer_dir, source, template)
