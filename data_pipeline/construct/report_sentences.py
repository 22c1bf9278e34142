"""Sentences of a report section.

A sentence ends at '.', '!' or '?' followed by white space or the end, except
- after an abbreviation that never ends one ("Dr.", "approx.", "e.g."; `context.json`
  "abbreviations.never_end") or a single capital initial ("J."),
- after one that ends one only before a capital ("a.m.", "etc."; "end_before_capital"),
- after a list number ("1." of "1. Cardiomegaly. 2. Small effusion."),
and never inside a number ("1.5 cm": no white space after the point). Blank lines and lines
starting with a list number ("2. ...") also end sentences, and so does the next number of an
inline numbered list without full stops ("1. Cardiomegaly 2. Small effusion").

A sentence's text has its white space collapsed (wrapped lines joined) and its list number
removed; otherwise it is verbatim (de-identification blanks "___" kept).
"""

from __future__ import annotations

import re

from data_pipeline.construct.report_rules import ReaderRules

__all__ = ["split_sentences"]

_BLOCKS = re.compile(r"\n[ \t]*\n|\n(?=[ \t]*\(?\d{1,2}[.)][ \t])")
_END = re.compile(r"[.!?]+(?=\s|$)")
_LAST_WORD = re.compile(r"(\S+)$")
_LIST_NUMBER = re.compile(r"^\(?(\d{1,2})[.)]\s+")
_LONE_NUMBER = re.compile(r"^\(?\d{1,2}$")


def _is_end(sentence_so_far: str, following: str, rules: ReaderRules) -> bool:
    """Whether the full stop after `sentence_so_far` ends a sentence, `following` being the text after it."""
    word_match = _LAST_WORD.search(sentence_so_far)
    if word_match is None or _LONE_NUMBER.match(sentence_so_far.strip()):
        return False
    word = word_match.group(1).lstrip("(\"'[").lower()
    head = _LIST_NUMBER.match(sentence_so_far.strip())
    if head and word.isdigit() and int(word) == int(head.group(1)) + 1:  # "1. Cardiomegaly 2. Small effusion"
        return False
    if word in rules.never_end or (len(word) == 1 and word_match.group(1)[-1].isupper()):
        return False
    if word in rules.end_before_capital:
        rest = following.lstrip()
        return not rest or rest[0].isupper()
    return True


def _split_block(block: str, rules: ReaderRules) -> list[str]:
    sentences, start = [], 0
    for match in _END.finditer(block):
        if _is_end(block[start : match.start()], block[match.end() :], rules):
            sentences.append(block[start : match.end()].strip())
            start = match.end()
    sentences.append(block[start:].strip())
    return [s for s in sentences if s]


def _split_inline_list(sentence: str) -> list[str]:
    """'1. Cardiomegaly 2. Small effusion' -> ['1. Cardiomegaly', '2. Small effusion']."""
    head = _LIST_NUMBER.match(sentence)
    if head is None:
        return [sentence]
    following = re.search(rf"\s(?={int(head.group(1)) + 1}[.)]\s+[A-Z_])", sentence)
    if following is None:
        return [sentence]
    return [sentence[: following.start()].strip()] + _split_inline_list(sentence[following.end() :])


def split_sentences(text: str, rules: ReaderRules) -> list[str]:
    """The sentences of one section's text, in order (see the module docstring)."""
    sentences: list[str] = []
    for block in _BLOCKS.split(text):
        block = " ".join(block.split())
        for sentence in _split_block(block, rules):
            for part in _split_inline_list(sentence):
                part = _LIST_NUMBER.sub("", part).strip()
                if any(c.isalnum() for c in part):
                    sentences.append(part)
    return sentences
