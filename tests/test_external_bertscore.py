"""BERTScore with an encoder on disk (`metrics.bertscore.BertScorer`) against the paper's formula
computed here token by token, from the encoder run on each text alone (no batching, no padding);
and its place in the report metrics of `score_external`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cxrtrek_jax.evaluation.metrics.bertscore import BertScorer  # noqa: E402
from cxrtrek_jax.evaluation.scores.external_scores import ExternalAnswer, score_external  # noqa: E402
from data_pipeline.external.external_items import ExternalItem, ExternalSet  # noqa: E402

WORDS = ("the heart is normal in size . lungs are clear no large right pleural effusion present mild "
         "cardiomegaly without pneumothorax").split()
PAIRS = [("the heart is normal .", "the heart is normal in size ."),
         ("large right pleural effusion", "no pleural effusion . lungs are clear"),
         ("mild cardiomegaly", "mild cardiomegaly without pneumothorax")]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT with a word-piece vocabulary of the test's words, saved as a HF directory."""
    directory = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def _by_hand(directory, layer, hypothesis, reference):
    tokenizer = transformers.BertTokenizerFast.from_pretrained(directory)
    model = transformers.BertModel.from_pretrained(directory).eval()

    def vectors(text):
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states[layer][0].double().numpy()
        return hidden[1:-1]  # [CLS] first, [SEP] last

    h, r = vectors(hypothesis), vectors(reference)
    cosine = lambda a, b: float(a @ b / np.sqrt((a @ a) * (b @ b)))  # noqa: E731
    precision = sum(max(cosine(x, y) for y in r) for x in h) / len(h)
    recall = sum(max(cosine(x, y) for x in h) for y in r) / len(r)
    return precision, recall, 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("layer", [1, 2])
def test_bertscore_equals_the_formula_token_by_token(encoder, layer):
    with BertScorer(encoder, layer=layer, batch_size=2) as scorer:  # batches of 2: padding in play
        scores = scorer.score([h for h, _ in PAIRS], [r for _, r in PAIRS])
        same = scorer.score(["lungs are clear"], ["lungs are clear"])
        empty = scorer.score([""], ["lungs are clear"])
    for row, (hypothesis, reference) in zip(scores, PAIRS):
        assert row == pytest.approx(_by_hand(encoder, layer, hypothesis, reference), abs=1e-6)
    assert same[0] == pytest.approx([1.0, 1.0, 1.0]) and empty[0].tolist() == [0.0, 0.0, 0.0]


def test_bertscore_joins_the_report_metrics_and_bad_settings_are_refused(encoder, tmp_path):
    items = tuple(ExternalItem(str(k), str(k), ("x.png",), r) for k, (_, r) in enumerate(PAIRS))
    data = ExternalSet("iu-xray", "report", "test", items, 3, Counter(), "fixture")
    answers = {str(k): ExternalAnswer(str(k), h) for k, (h, _) in enumerate(PAIRS)}
    scorer = BertScorer(encoder)
    scores = score_external(data, answers, resamples=10, meteor=False, bertscore=scorer)
    expected = np.mean([_by_hand(encoder, 2, h, r)[2] for h, r in PAIRS])
    assert scores.metrics["bertscore_f1"].value == pytest.approx(expected, abs=1e-6)
    assert "bertscore_f1" not in scores.unavailable and "chexbert_f1" in scores.unavailable
    assert "bertscore_f1" in scores.baseline
    with pytest.raises(ValueError, match="layer 3 outside 0..2"):
        BertScorer(encoder, layer=3)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        BertScorer(tmp_path / "missing")
