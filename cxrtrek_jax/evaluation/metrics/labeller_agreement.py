"""Per-observation agreement of the report labeller with a reference sentence set.

The reference set (`tests/data/labeller_sentences.json`) holds sentences with
their expected label per observation they mention (1 / 0 / -1; unlisted means
blank). "No Finding" is never listed: its expected value follows from the
others by CheXpert's rule (positive when no observation other than Support
Devices is positive or uncertain, else blank).

Per observation the table gives the number of sentences whose expected label
is not blank, how many of those the labeller labels exactly so, and how many
sentences it labels where blank is expected (spurious).

    python -m cxrtrek_jax.evaluation.metrics.labeller_agreement tests/data/labeller_sentences.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_pipeline.reports.chexpert_labeller import (
    CHEXPERT_OBSERVATIONS,
    POSITIVE,
    RULES_DIR,
    UNCERTAIN,
    ReportLabeller,
)

__all__ = ["ReferenceSentence", "load_reference", "expected_labels", "agreement_table", "format_table", "main"]

_VALUES = (POSITIVE, 0, UNCERTAIN)


@dataclasses.dataclass(frozen=True)
class ReferenceSentence:
    text: str
    labels: Mapping[str, int]  # expected non-blank labels, without "No Finding"
    source: str


def load_reference(path: str | Path) -> list[ReferenceSentence]:
    """The reference sentences of a JSON file ({"about": [...], "sentences": [...]}), checked."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["sentences"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read reference sentences {path}: {err!r}") from None
    sentences = []
    for i, entry in enumerate(entries):
        where = f"{path} sentence {i}"
        if not isinstance(entry, dict) or set(entry) != {"text", "labels", "source"}:
            raise ValueError(f"{where}: expected the keys text, labels and source, got {entry!r}")
        unknown = set(entry["labels"]) - set(CHEXPERT_OBSERVATIONS[1:])
        if unknown:
            raise ValueError(f"{where}: unknown or derived observation(s) {sorted(unknown)}")
        bad = {k: v for k, v in entry["labels"].items() if v not in _VALUES}
        if bad:
            raise ValueError(f"{where}: labels must be 1, 0 or -1, got {bad}")
        sentences.append(ReferenceSentence(entry["text"], dict(entry["labels"]), entry["source"]))
    return sentences


def expected_labels(sentence: ReferenceSentence) -> dict[str, int | None]:
    """All 14 expected labels of a reference sentence (blank = None; No Finding derived)."""
    labels: dict[str, int | None] = {o: sentence.labels.get(o) for o in CHEXPERT_OBSERVATIONS}
    findings = [o for o in CHEXPERT_OBSERVATIONS[1:] if o != "Support Devices"]
    labels["No Finding"] = None if any(labels[o] in (POSITIVE, UNCERTAIN) for o in findings) else POSITIVE
    return labels


def agreement_table(labeller: ReportLabeller, sentences: Sequence[ReferenceSentence]) -> dict[str, dict[str, int]]:
    """Per observation: `mentioned` (expected not blank), `agree` (of those, exact match), `spurious`."""
    table = {o: {"mentioned": 0, "agree": 0, "spurious": 0} for o in CHEXPERT_OBSERVATIONS}
    for sentence in sentences:
        got = labeller.label(sentence.text).labels
        for observation, want in expected_labels(sentence).items():
            row = table[observation]
            if want is None:
                row["spurious"] += got[observation] is not None
            else:
                row["mentioned"] += 1
                row["agree"] += got[observation] == want
    return table


def format_table(table: Mapping[str, Mapping[str, int]], n_sentences: int, exact: int) -> str:
    """A markdown table of `agreement_table`'s counts, with a total row."""
    lines = ["| observation | sentences | agree | agreement | spurious |", "|---|---:|---:|---:|---:|"]
    for observation, row in table.items():
        share = row["agree"] / row["mentioned"] if row["mentioned"] else float("nan")
        lines.append(f"| {observation} | {row['mentioned']} | {row['agree']} | {share:.3f} | {row['spurious']} |")
    lines.append(f"| all 14 labels right (sentences) | {n_sentences} | {exact} | {exact / n_sentences:.3f} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="reference sentence JSON (tests/data/labeller_sentences.json)")
    parser.add_argument("--rules-dir", default=str(RULES_DIR), help="labeller rules directory")
    parser.add_argument("--show-misses", action="store_true", help="also list the sentences labelled wrongly")
    args = parser.parse_args(argv)
    labeller = ReportLabeller.from_rules_dir(args.rules_dir)
    sentences = load_reference(args.reference)
    misses = [s for s in sentences if dict(labeller.label(s.text).labels) != expected_labels(s)]
    print(format_table(agreement_table(labeller, sentences), len(sentences), len(sentences) - len(misses)))
    if args.show_misses:
        for s in misses:
            got = {k: v for k, v in labeller.label(s.text).labels.items() if v is not None}
            want = {k: v for k, v in expected_labels(s).items() if v is not None}
            print(f"MISS {s.text!r}\n  want {want}\n  got  {got}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
