"""Optional LLM polish (`--llm HF_DIR`, off by default): a local causal LM rewrites the wording of
the rule-made questions and answers, and every rewrite is checked against the report's facts.

The authors had an LLM rewrite their items and a second one check them against the report
(`polish_flag`, `qwen_accepted`, `reason`). Here the check is a rule, not a model: a rewrite is
kept only when

  - it keeps the text's `<image>` placeholders and adds no box markup;
  - it names the same findings of the report (every finding name the rule text names is still
    there, and no other finding of the report is added);
  - it keeps the same side and location words (left, right, bilateral, upper, lower, base, ...);
  - it keeps the same polarity: a yes/no answer starts with the same "Yes"/"No", and a text
    with a negation ("no", "not", "without", ...) keeps one, one without gets none;
  - its length stays within half to twice the rule text's (plus 20 characters), and it keeps at
    least `MIN_SHARED_WORDS` of the rule text's words of four letters or more (a paraphrase
    keeps the medical terms; a model's noise does not).

Otherwise the rule text stays. Every item records which: `polish_flag` (True: rewritten) and
`polish_reason` (why not, or "checked against the report facts"). Closed items (choices) and
detection items are never rewritten: their options and boxes are the answer key.

The model is loaded with transformers from local files only, without remote code, and from
safetensors only (nothing from the model directory is executed or unpickled).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.files.cxrtrek_json import derive_messages
from data_pipeline.schema.boxes import has_box_markup
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, QAItem, Study, freeze

__all__ = ["POLISHED_QTYPES", "LOCATION_WORDS", "NEGATION_WORDS", "Rewriter", "check_rewrite", "polish_items",
           "polish_study", "hf_rewriter", "polish_with_llm"]

# Only these are rewritten; closed options and boxes are the answer key and stay verbatim.
POLISHED_QTYPES = ("yes_no", "captioning")
LOCATION_WORDS = ("left", "right", "bilateral", "both", "upper", "middle", "mid", "lower", "base", "bases", "basal",
                  "bibasilar", "apex", "apical", "lobe", "lingula", "retrocardiac", "perihilar", "hilar", "zone")
NEGATION_WORDS = ("no", "not", "without", "absent", "negative", "none", "free")
ACCEPTED = "checked against the report facts"
MIN_SHARED_WORDS = 0.3
_WORD = re.compile(r"[a-z]+")
# (kind, text) -> rewritten text; kind is "question" or "answer".
Rewriter = Callable[[str, str], str]
_INSTRUCTIONS = {
    "question": "Rewrite this question about a chest X-ray in different words. Keep its meaning, every "
                "finding name, side and location word, and any <image> tag. Output only the question.",
    "answer": "Rewrite this answer about a chest X-ray in different words. Keep its meaning, its yes or no, "
              "every finding name, side and location word. Output only the answer.",
}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _spellings(facts: Sequence[ReportFacts]) -> dict[str, set[str]]:
    """Finding name -> the word sequences that name it (its canonical name, the report's phrases)."""
    out: dict[str, set[str]] = {}
    for f in facts:
        for m in f.mentions:
            for text in (m.finding, m.phrase):
                if _words(text):
                    out.setdefault(m.finding, set()).add(" ".join(_words(text)))
    return out


def _named(text: str, spellings: dict[str, set[str]]) -> set[str]:
    """The findings `text` names by any of their spellings."""
    padded = f" {' '.join(_words(text))} "
    return {name for name, forms in spellings.items() if any(f" {form} " in padded for form in forms)}


def _yes_no(text: str) -> str | None:
    words = _words(text)
    return words[0] if words and words[0] in ("yes", "no") else None


def check_rewrite(original: str, rewrite: str, facts: Sequence[ReportFacts], *, yes_no: bool = False) -> str | None:
    """None when `rewrite` keeps what `original` says (see the module docstring), else the reason
    it does not."""
    if not rewrite.strip():
        return "empty rewrite"
    if not 0.5 * len(original) <= len(rewrite) <= 2 * len(original) + 20:
        return f"length {len(rewrite)} is not within half to twice the rule text's {len(original)}"
    if rewrite.count(IMAGE_PLACEHOLDER) != original.count(IMAGE_PLACEHOLDER) or has_box_markup(rewrite):
        return "image placeholders or box markup changed"
    content = {w for w in _words(original) if len(w) >= 4}
    shared = len(content & set(_words(rewrite))) / len(content) if content else 1.0
    if shared < MIN_SHARED_WORDS:
        return f"keeps only {shared:.0%} of the rule text's words"
    spellings = _spellings(facts)
    before, after = _named(original, spellings), _named(rewrite, spellings)
    if before != after:
        return f"findings named differ: {sorted(before)} vs {sorted(after)}"
    places = [set(_words(t)) & set(LOCATION_WORDS) for t in (original, rewrite)]
    if places[0] != places[1]:
        return f"side/location words differ: {sorted(places[0])} vs {sorted(places[1])}"
    if yes_no and _yes_no(original) != _yes_no(rewrite):
        return f"yes/no changed: {_yes_no(original)!r} vs {_yes_no(rewrite)!r}"
    negated = [bool(set(_words(t)) & set(NEGATION_WORDS)) for t in (original, rewrite)]
    if negated[0] != negated[1]:
        return "negation added or dropped"
    return None


def _polished(item: QAItem, facts: Sequence[ReportFacts], rewrite: Rewriter) -> QAItem:
    if item.qtype not in POLISHED_QTYPES:
        return _flagged(item, False, "closed options and boxes are kept verbatim")
    changes, reasons = {}, []
    for kind in ("question", "answer"):
        original = getattr(item, kind)
        candidate = " ".join(rewrite(kind, original).split())
        reason = check_rewrite(original, candidate, facts, yes_no=kind == "answer" and item.qtype == "yes_no")
        if reason is None:
            changes[kind] = candidate
        else:
            reasons.append(f"{kind}: {reason}")
    if reasons:
        return _flagged(item, False, "; ".join(reasons) + " (rule text kept)")
    if all(changes[kind] == getattr(item, kind) for kind in changes):
        return _flagged(item, False, "the rewrite is the rule text")
    return _flagged(dataclasses.replace(item, **changes), True, ACCEPTED)


def _flagged(item: QAItem, accepted: bool, reason: str) -> QAItem:
    extras = {**item.extras, "polish_flag": accepted, "polish_reason": reason}
    return dataclasses.replace(item, extras=freeze(extras))


def polish_items(items: Sequence[QAItem], facts: ReportFacts | Sequence[ReportFacts],
                 rewrite: Rewriter) -> tuple[QAItem, ...]:
    """Each item rewritten by `rewrite` where the rewrite of both its question and its answer
    passes `check_rewrite` against `facts` (the study's report facts, and its prior's and next
    study's for stages 5 and 6), else kept; `polish_flag` / `polish_reason` record which.
    A rewrite of question and answer is kept or dropped as a pair."""
    facts = (facts,) if isinstance(facts, ReportFacts) else tuple(facts)
    return tuple(_polished(item, facts, rewrite) for item in items)


def polish_study(study: Study, facts: ReportFacts | Sequence[ReportFacts], rewrite: Rewriter) -> Study:
    """The study with its items polished and its messages derived again (same system prompt)."""
    items = polish_items(study.items, facts, rewrite)
    system = study.messages[0].content if study.messages and study.messages[0].role == "system" else None
    messages = derive_messages(items, system) if study.messages is not None else None
    return study.replace(items=items, messages=messages)


def _check_model_dir(model_dir: str | os.PathLike) -> None:
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--llm {os.fspath(model_dir)}: not a directory")
    files = os.listdir(model_dir)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"--llm {os.fspath(model_dir)}: no *.safetensors weights (other weight formats are "
                         "never loaded)")


def hf_rewriter(model_dir: str | os.PathLike, *, max_new_tokens: int = 128) -> Rewriter:
    """A `Rewriter` running a Hugging Face causal LM from `model_dir` (greedy decoding, so the
    same text gets the same rewrite); its first output line is the rewrite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False,
                                                 use_safetensors=True).eval()

    def rewrite(kind: str, text: str) -> str:
        request = f"{_INSTRUCTIONS[kind]}\n\n{text}"
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tokenizer(f"{request}\nRewritten:", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        return new.splitlines()[0] if new else ""

    return rewrite


def polish_with_llm(items: Sequence[QAItem], facts: ReportFacts | Sequence[ReportFacts],
                    model_dir: str | os.PathLike, *, max_new_tokens: int = 128) -> tuple[QAItem, ...]:
    """`polish_items` with the causal LM in `model_dir` (`hf_rewriter`). The caller derives the
    study's messages again (or uses `polish_study` with `hf_rewriter`)."""
    return polish_items(items, facts, hf_rewriter(model_dir, max_new_tokens=max_new_tokens))
